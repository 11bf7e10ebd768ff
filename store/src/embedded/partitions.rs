//! Time partitions: one tantivy index per signal and time slice, so that retention drops whole directories.
//!
//! The catalog is shared: the indexer thread creates partitions and commits to them; queries take `Arc`s of the
//! partitions that overlap their range and search them without holding the catalog lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{Index, IndexReader, IndexSettings, ReloadPolicy};

use gantry_proto::Signal;

use super::schema::{Fields, dir_name};
use crate::{StoreError, TimeRange};

/// One signal's index for one time slice.
pub struct Partition {
    /// Which signal it holds.
    pub signal: Signal,
    /// Start of its slice, ns (inclusive).
    pub start_ns: i64,
    /// End of its slice, ns (exclusive).
    pub end_ns: i64,
    /// Its directory.
    pub dir: PathBuf,
    /// The index.
    pub index: Index,
    /// A reader reloaded after each commit.
    pub reader: IndexReader,
    /// The WAL seq up to which this partition has committed every document (from the commit payload).
    pub committed_seq: AtomicU64,
}

impl Partition {
    fn open(
        signal: Signal,
        start_ns: i64,
        width_ns: i64,
        dir: PathBuf,
        fields: &Fields,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir)?;
        let settings = index_settings();
        let directory = tantivy::directory::MmapDirectory::open(&dir)
            .map_err(|error| StoreError::Internal(format!("open {}: {error}", dir.display())))?;
        let index = Index::builder()
            .schema(fields.schema.clone())
            .settings(settings)
            .open_or_create(directory)?;
        let committed_seq = index
            .load_metas()?
            .payload
            .and_then(|payload| payload.parse().ok())
            .unwrap_or(0);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            signal,
            start_ns,
            end_ns: start_ns + width_ns,
            dir,
            index,
            reader,
            committed_seq: AtomicU64::new(committed_seq),
        })
    }

    /// Whether the partition's slice overlaps a range.
    pub fn overlaps(&self, range: &TimeRange) -> bool {
        self.start_ns < range.to_ns && range.from_ns < self.end_ns
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_size(&self.dir)
    }

    /// The WAL seq this partition has committed through.
    pub fn committed(&self) -> u64 {
        self.committed_seq.load(Ordering::Acquire)
    }
}

/// Settings of every partition: zstd (level 3: level 6 cost twice the CPU for a few % of disk) for the doc store,
/// in blocks large enough for it to find the repeats between records.
pub fn index_settings() -> IndexSettings {
    IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor {
            compression_level: Some(3),
        }),
        docstore_blocksize: 64 * 1024,
        ..IndexSettings::default()
    }
}

/// Every partition of the store, by signal and start.
pub struct Catalog {
    root: PathBuf,
    width_ns: i64,
    fields: [Arc<Fields>; 3],
    partitions: RwLock<BTreeMap<(Signal, i64), Arc<Partition>>>,
}

impl Catalog {
    /// Opens every partition found under `root`.
    pub fn open(root: &Path, width: std::time::Duration) -> Result<Self, StoreError> {
        let fields = Signal::ALL.map(|signal| Arc::new(Fields::new(signal)));
        let catalog = Self {
            root: root.to_owned(),
            width_ns: width.as_nanos() as i64,
            fields,
            partitions: RwLock::new(BTreeMap::new()),
        };
        let mut partitions = BTreeMap::new();
        for signal in Signal::ALL {
            let dir = root.join(dir_name(signal));
            std::fs::create_dir_all(&dir)?;
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with("deleting-") {
                    // Retention was deleting it when the process stopped: finish the job.
                    std::fs::remove_dir_all(entry.path())?;
                    continue;
                }
                let Some(start_ns) = entry
                    .file_name()
                    .to_str()
                    .and_then(|name| name.parse::<i64>().ok())
                else {
                    continue;
                };
                // A partition's width is fixed when it is made; reopen it with the width it was made with.
                let width_ns = std::fs::read_to_string(entry.path().join("width_ns"))
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(catalog.width_ns);
                match Partition::open(
                    signal,
                    start_ns,
                    width_ns,
                    entry.path(),
                    catalog.fields(signal),
                ) {
                    Ok(partition) => {
                        partitions.insert((signal, start_ns), Arc::new(partition));
                    }
                    // A partition that cannot be opened (e.g. half deleted by retention when the process died) must
                    // not keep the plane from starting: it is set aside, named so, and the rest is served.
                    Err(error) => {
                        let aside = dir.join(format!("broken-{start_ns}"));
                        tracing::error!(
                            error = %error,
                            partition = %entry.path().display(),
                            moved_to = %aside.display(),
                            "a partition cannot be opened; setting it aside"
                        );
                        std::fs::rename(entry.path(), &aside)?;
                    }
                }
            }
        }
        *catalog.partitions.write().expect("catalog lock poisoned") = partitions;
        Ok(catalog)
    }

    /// The schema fields of a signal.
    pub fn fields(&self, signal: Signal) -> &Arc<Fields> {
        &self.fields[signal as usize]
    }

    /// The partition holding `ts_ns` for a signal, created if needed.
    pub fn partition_for(&self, signal: Signal, ts_ns: i64) -> Result<Arc<Partition>, StoreError> {
        let partitions = self.partitions.read().expect("catalog lock poisoned");
        // An existing partition covering the time wins, whatever width it was made with.
        if let Some((_, partition)) = partitions.range(..=(signal, ts_ns)).next_back()
            && partition.signal == signal
            && ts_ns < partition.end_ns
        {
            return Ok(partition.clone());
        }
        drop(partitions);
        let start_ns = ts_ns.div_euclid(self.width_ns) * self.width_ns;
        let mut partitions = self.partitions.write().expect("catalog lock poisoned");
        if let Some(partition) = partitions.get(&(signal, start_ns)) {
            return Ok(partition.clone());
        }
        let dir = self.root.join(dir_name(signal)).join(start_ns.to_string());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("width_ns"), self.width_ns.to_string())?;
        let partition = Arc::new(Partition::open(
            signal,
            start_ns,
            self.width_ns,
            dir,
            self.fields(signal),
        )?);
        partitions.insert((signal, start_ns), partition.clone());
        Ok(partition)
    }

    /// Partitions of a signal overlapping a range, newest first.
    pub fn overlapping(&self, signal: Signal, range: &TimeRange) -> Vec<Arc<Partition>> {
        let partitions = self.partitions.read().expect("catalog lock poisoned");
        partitions
            .range((signal, i64::MIN)..=(signal, i64::MAX))
            .rev()
            .map(|(_, partition)| partition.clone())
            .filter(|partition| partition.overlaps(range))
            .collect()
    }

    /// All partitions, oldest first.
    pub fn all(&self) -> Vec<Arc<Partition>> {
        let partitions = self.partitions.read().expect("catalog lock poisoned");
        let mut all: Vec<_> = partitions.values().cloned().collect();
        all.sort_by_key(|partition| partition.start_ns);
        all
    }

    /// Removes a partition from the catalog and deletes its files. Open searchers keep working on Linux
    /// (the files stay mapped until they are dropped).
    pub fn drop_partition(&self, partition: &Partition) -> Result<(), StoreError> {
        self.partitions
            .write()
            .expect("catalog lock poisoned")
            .remove(&(partition.signal, partition.start_ns));
        // Renamed first (one atomic step) so a crash mid-delete leaves no half partition under a partition's name.
        let doomed = partition
            .dir
            .with_file_name(format!("deleting-{}", partition.start_ns));
        std::fs::rename(&partition.dir, &doomed)?;
        std::fs::remove_dir_all(&doomed)?;
        Ok(())
    }
}

/// Total size of the files below a directory.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
