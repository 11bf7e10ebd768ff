//! Unit tests for the write-ahead log: round trips, rotation, removal and recovery from damage.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use crate::format::{RecordHeader, SEGMENT_HEADER_LEN, segment_file_name};
use crate::{MAX_PAYLOAD, RecoveryStats, Wal, WalError, WalOptions};

type Records = Vec<(u64, Vec<u8>)>;

fn open(dir: &Path, segment_bytes: u64) -> (Wal, RecoveryStats) {
    Wal::open(dir, WalOptions { segment_bytes }).expect("open wal")
}

fn read_all(wal: &mut Wal) -> Records {
    wal.read_from(0)
        .expect("read_from")
        .collect::<Result<_, _>>()
        .expect("read records")
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

fn disk_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

/// Payload of exactly `len` bytes derived from `i`.
fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 31 + k * 7) as u8).collect()
}

fn frame(len: usize) -> u64 {
    16 + len as u64
}

/// Writes `n` records of `len` bytes (seq 1..=n), syncs and closes.
fn build(dir: &Path, segment_bytes: u64, n: u64, len: usize) -> Records {
    let (mut wal, _) = open(dir, segment_bytes);
    let mut recs = Vec::new();
    for i in 1..=n {
        let p = payload(i, len);
        assert_eq!(wal.append(&p).unwrap(), i);
        recs.push((i, p));
    }
    wal.sync().unwrap();
    recs
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn append_bytes(path: &Path, extra: &[u8]) {
    let mut bytes = fs::read(path).unwrap();
    bytes.extend_from_slice(extra);
    fs::write(path, bytes).unwrap();
}

#[test]
fn round_trip_append_sync_reopen_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut expected = Vec::new();
    {
        let (mut wal, _) = open(dir, 1 << 20);
        for i in 1..=100u64 {
            let p = payload(i, (i as usize * 13) % 200);
            assert_eq!(wal.append(&p).unwrap(), i);
            expected.push((i, p));
        }
        assert_eq!(wal.append(b"").unwrap(), 101);
        expected.push((101, Vec::new()));
        wal.sync().unwrap();
        assert_eq!(wal.last_seq(), 101);
        assert_eq!(read_all(&mut wal), expected);
        assert_eq!(wal.size_bytes(), disk_bytes(dir));
    }
    let (mut wal, stats) = open(dir, 1 << 20);
    assert_eq!(
        stats,
        RecoveryStats {
            segments: 1,
            records: 101,
            truncated_bytes: 0,
            corrupt_records: 0
        }
    );
    assert_eq!(wal.last_seq(), 101);
    assert_eq!(wal.first_seq(), Some(1));
    assert_eq!(read_all(&mut wal), expected);
    assert_eq!(wal.append(b"next").unwrap(), 102);
}

#[test]
fn empty_dir_is_created_and_starts_at_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("wal");
    let (mut wal, stats) = open(&dir, 1024);
    assert_eq!(
        stats,
        RecoveryStats {
            segments: 1,
            ..Default::default()
        }
    );
    assert_eq!(wal.last_seq(), 0);
    assert_eq!(wal.first_seq(), None);
    assert!(read_all(&mut wal).is_empty());
    assert_eq!(wal.size_bytes(), SEGMENT_HEADER_LEN);
    wal.sync().unwrap();
    assert_eq!(wal.remove_through(u64::MAX).unwrap(), 0);
    drop(wal);
    assert_eq!(segment_files(&dir), vec![dir.join(segment_file_name(1))]);

    let (mut wal, stats) = open(&dir, 1024);
    assert_eq!(stats.records, 0);
    assert_eq!(wal.last_seq(), 0);
    assert_eq!(wal.append(b"first").unwrap(), 1);
}

#[test]
fn rotation_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Header 8 + two 56-byte frames = 120 >= 100: two records per segment.
    let recs = build(dir, 100, 10, 40);
    let names: Vec<PathBuf> = [1, 3, 5, 7, 9]
        .iter()
        .map(|s| dir.join(segment_file_name(*s)))
        .collect();
    assert_eq!(segment_files(dir), names);

    let (mut wal, stats) = open(dir, 100);
    assert_eq!(stats.segments, 5);
    assert_eq!(stats.records, 10);
    assert_eq!(stats.truncated_bytes + stats.corrupt_records, 0);
    assert_eq!(read_all(&mut wal), recs);
    assert_eq!(
        wal.read_from(4)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect::<Vec<_>>(),
        (4..=10).collect::<Vec<_>>()
    );
    assert_eq!(wal.read_from(11).unwrap().count(), 0);
    assert_eq!(wal.size_bytes(), disk_bytes(dir));
    assert_eq!(wal.append(b"x").unwrap(), 11);
    assert_eq!(segment_files(dir).len(), 6);
}

#[test]
fn oversized_segment_record_and_zero_segment_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // segment_bytes 0: every record gets its own segment, never an empty one.
    let recs = build(dir, 0, 4, 3);
    assert_eq!(segment_files(dir).len(), 4);
    let (mut wal, stats) = open(dir, 0);
    assert_eq!(stats.segments, 4);
    assert_eq!(read_all(&mut wal), recs);
}

#[test]
fn remove_through_deletes_whole_sealed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 100, 10, 40);
    let (mut wal, _) = open(dir, 100);
    let seg_len = SEGMENT_HEADER_LEN + 2 * frame(40);

    assert_eq!(wal.remove_through(0).unwrap(), 0);
    // Segment 3 holds 3..=4, so it is not removable through 3.
    assert_eq!(wal.remove_through(3).unwrap(), seg_len);
    assert_eq!(wal.first_seq(), Some(3));
    assert_eq!(read_all(&mut wal)[0].0, 3);
    assert_eq!(wal.remove_through(6).unwrap(), 2 * seg_len);
    assert_eq!(wal.first_seq(), Some(7));
    assert_eq!(wal.size_bytes(), disk_bytes(dir));

    // Everything: the active segment (9..=10) stays.
    assert_eq!(wal.remove_through(u64::MAX).unwrap(), seg_len);
    assert_eq!(segment_files(dir), vec![dir.join(segment_file_name(9))]);
    assert_eq!(wal.first_seq(), Some(9));
    assert_eq!(
        read_all(&mut wal).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![9, 10]
    );
    drop(wal);

    let (mut wal, stats) = open(dir, 100);
    assert_eq!(stats.records, 2);
    assert_eq!(wal.first_seq(), Some(9));
    assert_eq!(wal.last_seq(), 10);
    assert_eq!(wal.append(b"y").unwrap(), 11);
}

#[test]
fn seq_stays_monotonic_when_only_an_empty_active_segment_remains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 100, 10, 40);
    {
        let (mut wal, _) = open(dir, 100);
        // Rotates into segment 11; the crash below loses the unsynced record.
        assert_eq!(wal.append(&payload(11, 40)).unwrap(), 11);
    }
    set_len(&dir.join(segment_file_name(11)), SEGMENT_HEADER_LEN);

    let (mut wal, stats) = open(dir, 100);
    assert_eq!(stats.records, 10);
    assert_eq!(wal.last_seq(), 10);
    wal.remove_through(u64::MAX).unwrap();
    assert_eq!(segment_files(dir), vec![dir.join(segment_file_name(11))]);
    assert_eq!(wal.first_seq(), None);
    assert_eq!(wal.last_seq(), 10);
    drop(wal);

    let (mut wal, stats) = open(dir, 100);
    assert_eq!(stats.records, 0);
    assert_eq!(wal.first_seq(), None);
    assert_eq!(wal.last_seq(), 10);
    assert_eq!(wal.append(b"z").unwrap(), 11);
    wal.sync().unwrap();
    assert_eq!(read_all(&mut wal), vec![(11, b"z".to_vec())]);
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record() {
    let src = tempfile::tempdir().unwrap();
    let recs = build(src.path(), 1 << 20, 5, 30);
    let seg = src.path().join(segment_file_name(1));
    let original = fs::read(&seg).unwrap();
    let full = original.len() as u64;
    let last_start = full - frame(30);

    for cut in last_start..full {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join(segment_file_name(1));
        fs::write(&path, &original[..cut as usize]).unwrap();

        let (mut wal, stats) = open(dir, 1 << 20);
        assert_eq!(
            stats,
            RecoveryStats {
                segments: 1,
                records: 4,
                truncated_bytes: cut - last_start,
                corrupt_records: 0
            },
            "cut at {cut}"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), last_start);
        assert_eq!(read_all(&mut wal), recs[..4]);
        assert_eq!(wal.last_seq(), 4);
        assert_eq!(wal.append(b"after").unwrap(), 5);
        wal.sync().unwrap();
        drop(wal);

        let (mut wal, stats) = open(dir, 1 << 20);
        assert_eq!(stats.truncated_bytes, 0);
        let got = read_all(&mut wal);
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], (5, b"after".to_vec()));
    }
}

#[test]
fn torn_header_of_the_last_segment() {
    for cut in 0..SEGMENT_HEADER_LEN {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 100, 4, 40);
        {
            let (mut wal, _) = open(dir, 100);
            wal.append(&payload(5, 40)).unwrap(); // rotates into segment 5
        }
        let path = dir.join(segment_file_name(5));
        set_len(&path, cut);

        let (mut wal, stats) = open(dir, 100);
        assert_eq!(stats.records, 4);
        assert_eq!(stats.truncated_bytes, cut);
        assert_eq!(stats.corrupt_records, 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT_HEADER_LEN);
        assert_eq!(wal.last_seq(), 4);
        assert_eq!(wal.append(b"again").unwrap(), 5);
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, _) = open(dir, 100);
        assert_eq!(read_all(&mut wal).len(), 5);
    }
}

#[test]
fn flipped_payload_byte_in_last_segment_cuts_from_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = build(dir, 1 << 20, 10, 20);
    let path = dir.join(segment_file_name(1));
    let rec5 = SEGMENT_HEADER_LEN + 4 * frame(20);
    flip(&path, rec5 + 16 + 7);

    let (mut wal, stats) = open(dir, 1 << 20);
    assert_eq!(
        stats,
        RecoveryStats {
            segments: 1,
            records: 4,
            truncated_bytes: 6 * frame(20),
            corrupt_records: 6
        }
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), rec5);
    assert_eq!(read_all(&mut wal), recs[..4]);
    assert_eq!(wal.append(b"five").unwrap(), 5);
}

#[test]
fn flipped_header_bytes_in_last_segment() {
    // (offset within record 5's header, expected corrupt count)
    for (at, corrupt) in [(3u64, 1u64), (5, 6), (9, 6)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let recs = build(dir, 1 << 20, 10, 20);
        let path = dir.join(segment_file_name(1));
        let rec5 = SEGMENT_HEADER_LEN + 4 * frame(20);
        flip(&path, rec5 + at);

        let (mut wal, stats) = open(dir, 1 << 20);
        assert_eq!(stats.records, 4, "byte {at}");
        assert_eq!(stats.truncated_bytes, 6 * frame(20), "byte {at}");
        assert_eq!(stats.corrupt_records, corrupt, "byte {at}");
        assert_eq!(read_all(&mut wal), recs[..4]);
        assert_eq!(wal.append(b"five").unwrap(), 5);
    }
}

#[test]
fn corruption_in_an_earlier_segment_skips_the_rest_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = build(dir, 100, 10, 40);
    let path = dir.join(segment_file_name(3));
    let before = fs::read(&path).unwrap();
    flip(&path, SEGMENT_HEADER_LEN + 16 + 1); // payload of record 3

    let (mut wal, stats) = open(dir, 100);
    assert_eq!(
        stats,
        RecoveryStats {
            segments: 5,
            records: 8,
            truncated_bytes: 0,
            corrupt_records: 2
        }
    );
    // Earlier segments are left untouched.
    assert_eq!(fs::read(&path).unwrap().len(), before.len());
    let got = read_all(&mut wal);
    let want: Records = recs
        .iter()
        .filter(|(s, _)| ![3, 4].contains(s))
        .cloned()
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        wal.read_from(3).unwrap().next().unwrap().unwrap().0,
        5,
        "reader jumps over the damaged records"
    );
    assert_eq!(wal.first_seq(), Some(1));
    assert_eq!(wal.append(b"eleven").unwrap(), 11);
    assert_eq!(wal.remove_through(4).unwrap(), 2 * (8 + 2 * frame(40)));
    assert_eq!(wal.first_seq(), Some(5));
}

#[test]
fn second_record_corrupt_in_earlier_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 100, 10, 40);
    let path = dir.join(segment_file_name(3));
    flip(&path, SEGMENT_HEADER_LEN + frame(40) + 16 + 39); // payload of record 4
    let (mut wal, stats) = open(dir, 100);
    assert_eq!(stats.records, 9);
    assert_eq!(stats.corrupt_records, 1);
    let seqs: Vec<u64> = read_all(&mut wal).iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 5, 6, 7, 8, 9, 10]);
}

#[test]
fn bad_magic_in_earlier_segment_skips_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 100, 10, 40);
    flip(&dir.join(segment_file_name(5)), 0);
    let (mut wal, stats) = open(dir, 100);
    assert_eq!(stats.records, 8);
    assert_eq!(stats.corrupt_records, 2);
    let seqs: Vec<u64> = read_all(&mut wal).iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 7, 8, 9, 10]);
}

#[test]
fn bad_magic_in_last_segment_resets_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 100, 10, 40);
    let path = dir.join(segment_file_name(9));
    let len = fs::metadata(&path).unwrap().len();
    flip(&path, 1);
    let (mut wal, stats) = open(dir, 100);
    assert_eq!(stats.records, 8);
    assert_eq!(stats.truncated_bytes, len);
    assert_eq!(stats.corrupt_records, 2);
    assert_eq!(wal.last_seq(), 8);
    assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT_HEADER_LEN);
    assert_eq!(wal.append(b"nine").unwrap(), 9);
    assert_eq!(read_all(&mut wal).len(), 9);
}

#[test]
fn garbage_appended_to_the_end_is_cut() {
    let valid_frame_wrong_seq = {
        let h = RecordHeader::new(99, b"stray");
        let mut b = h.encode().to_vec();
        b.extend_from_slice(b"stray");
        b
    };
    let pseudo_random: Vec<u8> = (0..301u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(Vec<u8>, Option<u64>)> = vec![
        (vec![0xff; 37], Some(1)),
        (vec![0xff; 5], Some(0)),
        (vec![0; 4096], Some(0)),
        (valid_frame_wrong_seq, Some(1)),
        (pseudo_random, None),
    ];
    for (garbage, corrupt) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let recs = build(dir, 1 << 20, 5, 10);
        let path = dir.join(segment_file_name(1));
        append_bytes(&path, &garbage);

        let (mut wal, stats) = open(dir, 1 << 20);
        assert_eq!(stats.records, 5);
        assert_eq!(stats.truncated_bytes, garbage.len() as u64);
        if let Some(c) = corrupt {
            assert_eq!(stats.corrupt_records, c, "garbage {:?}", &garbage[..4]);
        }
        assert_eq!(read_all(&mut wal), recs);
        assert_eq!(wal.append(b"six").unwrap(), 6);
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, stats) = open(dir, 1 << 20);
        assert_eq!(stats.truncated_bytes, 0);
        assert_eq!(read_all(&mut wal).len(), 6);
    }
}

#[test]
fn huge_length_field_is_corruption_not_an_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 1 << 20, 3, 10);
    let h = RecordHeader {
        len: u32::MAX,
        crc: 0,
        seq: 4,
    };
    append_bytes(&dir.join(segment_file_name(1)), &h.encode());
    let (wal, stats) = open(dir, 1 << 20);
    assert_eq!(stats.corrupt_records, 1);
    assert_eq!(stats.truncated_bytes, 16);
    assert_eq!(wal.last_seq(), 3);
}

#[test]
fn unsupported_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 1 << 20, 3, 10);
    let path = dir.join(segment_file_name(1));
    let mut bytes = fs::read(&path).unwrap();
    bytes[4] = 2;
    fs::write(&path, bytes).unwrap();
    let err = Wal::open(dir, WalOptions::default()).unwrap_err();
    assert!(
        matches!(err, WalError::UnsupportedVersion { version: 2, .. }),
        "{err}"
    );
}

#[test]
fn second_open_of_the_same_dir_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path(), 1024);
    let err = Wal::open(tmp.path(), WalOptions::default()).unwrap_err();
    assert!(matches!(err, WalError::Locked(_)), "{err}");
    assert!(err.to_string().contains("locked"));
    drop(wal);
    open(tmp.path(), 1024);
}

#[test]
fn payload_too_large_is_rejected_without_poisoning() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), 1024);
    let big = vec![0u8; MAX_PAYLOAD + 1];
    assert!(matches!(
        wal.append(&big),
        Err(WalError::PayloadTooLarge { .. })
    ));
    assert_eq!(wal.last_seq(), 0);
    assert_eq!(wal.append(b"ok").unwrap(), 1);
    wal.sync().unwrap();
}

#[test]
fn reader_sees_unsynced_appends_and_is_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), 100);
    for i in 1..=5 {
        wal.append(&payload(i, 40)).unwrap();
    }
    let reader = wal.read_from(2).unwrap();
    wal.append(b"later").unwrap();
    let seqs: Vec<u64> = reader.map(|r| r.unwrap().0).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    assert_eq!(read_all(&mut wal).len(), 6);
}

#[test]
fn reader_reports_corruption_that_appeared_after_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 100, 6, 40);
    let (mut wal, _) = open(dir, 100);
    flip(&dir.join(segment_file_name(3)), SEGMENT_HEADER_LEN + 16 + 2);
    let got: Vec<_> = wal.read_from(0).unwrap().collect();
    assert_eq!(got.len(), 3);
    assert!(got[0].is_ok() && got[1].is_ok());
    let err = got[2].as_ref().unwrap_err();
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt record in {} at offset 8: checksum mismatch",
            dir.join(segment_file_name(3)).display()
        )
    );
}

#[test]
fn unrelated_files_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = build(dir, 1 << 20, 3, 5);
    fs::write(dir.join("notes.txt"), b"hello").unwrap();
    fs::write(dir.join("123.wal"), b"not a segment").unwrap();
    fs::create_dir(dir.join(segment_file_name(50))).unwrap();
    let (mut wal, stats) = open(dir, 1 << 20);
    assert_eq!(stats.segments, 1);
    assert_eq!(read_all(&mut wal), recs);
    assert_eq!(wal.append(b"four").unwrap(), 4);
}

#[test]
fn drop_without_sync_keeps_records_for_a_clean_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let (mut wal, _) = open(dir, 1 << 20);
        wal.append(b"a").unwrap();
        wal.append(b"b").unwrap();
    }
    let (mut wal, stats) = open(dir, 1 << 20);
    assert_eq!(stats.records, 2);
    assert_eq!(read_all(&mut wal).len(), 2);
}

#[test]
fn recover_in_place_keeps_the_lock_and_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = open(dir, 4096);
    for i in 1..=40 {
        wal.append(&payload(i, 200)).unwrap();
    }
    wal.sync().unwrap();
    let before = read_all(&mut wal);
    let stats = wal.recover().unwrap();
    assert_eq!(stats.truncated_bytes, 0);
    assert_eq!(read_all(&mut wal), before);
    assert!(matches!(
        Wal::open(
            dir,
            WalOptions {
                segment_bytes: 4096
            }
        ),
        Err(WalError::Locked(_))
    ));
    assert_eq!(wal.append(b"after").unwrap(), 41);
    wal.sync().unwrap();
    // The next segment after a record is where a reader goes on past a damaged one.
    let next = wal.next_segment_start(1).unwrap();
    assert!(next > 1 && next <= 41, "{next}");
    assert_eq!(wal.next_segment_start(41), None);
}
