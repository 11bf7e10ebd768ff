//! Model-based property test: random operation sequences (append, sync, reopen, crash, remove, read)
//! checked against an in-memory model of what the log must contain.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use gantry_wal::{Wal, WalOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append a payload (possibly empty).
    Append(Vec<u8>),
    /// Group commit.
    Sync,
    /// Clean restart: drop (buffer flushed to the OS) and open again.
    Reopen,
    /// Crash: drop without sync, then cut the last segment to a random length that keeps at
    /// least what was synced, then open again.
    Crash(u64),
    /// Remove segments through a seq picked around the stored range.
    RemoveThrough(u64),
    /// Read from a cursor picked around the stored range.
    Read(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..96).prop_map(Op::Append),
        3 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        2 => any::<u64>().prop_map(Op::Crash),
        1 => any::<u64>().prop_map(Op::RemoveThrough),
        1 => any::<u64>().prop_map(Op::Read),
    ]
}

/// What the log must hold.
#[derive(Debug, Default)]
struct Model {
    /// Records currently stored, in seq order.
    records: VecDeque<(u64, Vec<u8>)>,
    /// Seq of the last appended record.
    last_seq: u64,
    /// Every record with seq <= this must survive a crash.
    durable_through: u64,
}

/// The last (active) segment file and its length.
fn last_segment(dir: &Path) -> (PathBuf, u64) {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    let last = files.pop().expect("a segment always exists");
    let len = fs::metadata(&last).unwrap().len();
    (last, len)
}

fn disk_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn read_all(wal: &mut Wal, from: u64) -> Result<Vec<(u64, Vec<u8>)>, TestCaseError> {
    wal.read_from(from)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Checks the state after an open that follows a crash or a clean restart and resyncs the model.
fn check_after_open(
    wal: &mut Wal,
    model: &mut Model,
    stats: gantry_wal::RecoveryStats,
    clean: bool,
) -> Result<(), TestCaseError> {
    let got = read_all(wal, 0)?;
    prop_assert_eq!(stats.records, got.len() as u64);
    prop_assert_eq!(
        stats.corrupt_records,
        0,
        "a crash only tears, never corrupts"
    );
    if clean {
        prop_assert_eq!(stats.truncated_bytes, 0);
        prop_assert_eq!(&got, &Vec::from(model.records.clone()));
        prop_assert_eq!(wal.last_seq(), model.last_seq);
    } else {
        // What survived is a prefix of what was appended ...
        prop_assert!(got.len() <= model.records.len());
        for (g, m) in got.iter().zip(model.records.iter()) {
            prop_assert_eq!(g, m);
        }
        // ... that holds every synced record exactly once, in order.
        let required = model
            .records
            .iter()
            .filter(|(s, _)| *s <= model.durable_through)
            .count();
        prop_assert!(
            got.len() >= required,
            "lost synced records: have {}, need {}",
            got.len(),
            required
        );
        prop_assert!(wal.last_seq() >= model.durable_through);
        prop_assert!(wal.last_seq() <= model.last_seq);
        if let Some((last, _)) = got.last() {
            prop_assert_eq!(wal.last_seq(), *last);
        }
    }
    for w in got.windows(2) {
        prop_assert_eq!(w[1].0, w[0].0 + 1, "seqs are consecutive");
    }
    // Open makes everything it recovered durable.
    model.records = got.into();
    model.last_seq = wal.last_seq();
    model.durable_through = model.last_seq;
    Ok(())
}

fn pick(sel: u64, model: &Model) -> u64 {
    let lo = model
        .records
        .front()
        .map_or(model.last_seq, |r| r.0)
        .saturating_sub(1);
    let hi = model.last_seq + 2;
    lo + sel % (hi - lo + 1)
}

fn run(ops: Vec<Op>, segment_bytes: u64) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = WalOptions { segment_bytes };
    let (mut wal, stats) = Wal::open(dir, opts).unwrap();
    prop_assert_eq!(stats.records, 0);
    let mut model = Model::default();
    // Active segment and its length at the last point everything was durable.
    let mut synced = last_segment(dir);

    for op in ops {
        match op {
            Op::Append(payload) => {
                let seq = wal.append(&payload).unwrap();
                prop_assert_eq!(seq, model.last_seq + 1);
                model.last_seq = seq;
                model.records.push_back((seq, payload));
            }
            Op::Sync => {
                wal.sync().unwrap();
                model.durable_through = model.last_seq;
                synced = last_segment(dir);
                prop_assert_eq!(wal.size_bytes(), disk_bytes(dir));
            }
            Op::Reopen => {
                drop(wal);
                let (w, stats) = Wal::open(dir, opts).unwrap();
                wal = w;
                check_after_open(&mut wal, &mut model, stats, true)?;
                synced = last_segment(dir);
                prop_assert_eq!(wal.size_bytes(), disk_bytes(dir));
            }
            Op::Crash(sel) => {
                drop(wal);
                let (path, len) = last_segment(dir);
                // Sealed segments were synced at rotation; only the active one can lose bytes.
                let min = if path == synced.0 { synced.1 } else { 0 };
                prop_assert!(min <= len);
                let cut = min + sel % (len - min + 1);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(cut)
                    .unwrap();
                let (w, stats) = Wal::open(dir, opts).unwrap();
                wal = w;
                check_after_open(&mut wal, &mut model, stats, false)?;
                synced = last_segment(dir);
                prop_assert_eq!(wal.size_bytes(), disk_bytes(dir));
            }
            Op::RemoveThrough(sel) => {
                let through = pick(sel, &model);
                let before = wal.size_bytes();
                let freed = wal.remove_through(through).unwrap();
                prop_assert_eq!(before - wal.size_bytes(), freed);
                let got = read_all(&mut wal, 0)?;
                // A suffix of the model that keeps everything above `through`.
                let skip = model.records.len() - got.len();
                for (g, m) in got.iter().zip(model.records.iter().skip(skip)) {
                    prop_assert_eq!(g, m);
                }
                prop_assert!(model.records.iter().take(skip).all(|(s, _)| *s <= through));
                model.records.drain(..skip);
            }
            Op::Read(sel) => {
                let from = pick(sel, &model);
                let got = read_all(&mut wal, from)?;
                let want: Vec<_> = model
                    .records
                    .iter()
                    .filter(|(s, _)| *s >= from)
                    .cloned()
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
        prop_assert_eq!(wal.last_seq(), model.last_seq);
        prop_assert_eq!(wal.first_seq(), model.records.front().map(|r| r.0));
    }

    // Final clean restart sees exactly the model.
    drop(wal);
    let (mut wal, stats) = Wal::open(dir, opts).unwrap();
    check_after_open(&mut wal, &mut model, stats, true)?;
    Ok(())
}

proptest! {
    // fsync-bound; 128 cases by default, PROPTEST_CASES overrides.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn wal_matches_model(
        ops in prop::collection::vec(op(), 1..80),
        segment_bytes in prop_oneof![Just(0u64), 1u64..600, Just(1u64 << 20)],
    ) {
        run(ops, segment_bytes)?;
    }
}
