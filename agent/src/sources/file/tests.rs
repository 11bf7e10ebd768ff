//! Rotation, truncation and restart behaviour of the file source, driven pass by pass against a real disk buffer.
use super::*;
use crate::config::RawConfig;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

/// A file source over `dir/*.log` with its own buffer in `dir/data`, driven by hand.
struct Harness {
    source: Option<FileSource>,
    buffer: Arc<Buffer>,
    writer: Option<std::thread::JoinHandle<()>>,
    now: Instant,
}

impl Harness {
    fn new(dir: &Path) -> Harness {
        let config = RawConfig::from_toml(
                &format!(
                    "plane = \"http://127.0.0.1:1\"\ntoken = \"t\"\ndata_dir = \"{}\"\n[[files]]\npath = \"{}/*.log\"\n",
                    dir.join("data").display(),
                    dir.display()
                ),
                "test",
            )
            .unwrap()
            .validate()
            .unwrap();
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let telemetry = Arc::new(Telemetry::new(&[]));
        let buffer = Buffer::open(&config.data_dir, 1 << 20, telemetry.clone()).unwrap();
        let (tx, writer) = crate::buffer::spawn_writer(buffer.clone()).unwrap();
        let mut source = FileSource::recover(&config, buffer.clone(), tx, telemetry).unwrap();
        // As `FileSource::run` starts.
        source.scan_orphans();
        Harness {
            source: Some(source),
            buffer,
            writer: Some(writer),
            now: Instant::now(),
        }
    }

    /// One scan + read pass, then (2 s later) a pass that flushes idle records, then a commit.
    fn step(&mut self) {
        let source = self.source.as_mut().unwrap();
        let mut buf = vec![0u8; CHUNK];
        source.scan(self.now);
        source.read_pass(&mut buf, self.now);
        self.now += Duration::from_secs(2);
        source.scan(self.now);
        source.read_pass(&mut buf, self.now);
        if source.batch.records > 0 {
            assert!(
                source
                    .commit(&gantry_support::CancellationToken::new())
                    .unwrap()
            );
        }
    }

    /// One read pass, without the scan that looks for rotated and truncated files first, then a commit.
    fn read_only(&mut self) {
        let source = self.source.as_mut().unwrap();
        source.read_pass(&mut vec![0u8; CHUNK], self.now);
        if source.batch.records > 0 {
            assert!(
                source
                    .commit(&gantry_support::CancellationToken::new())
                    .unwrap()
            );
        }
    }

    /// Bodies of every record in the buffer, in order.
    fn bodies(&self) -> Vec<String> {
        let mut out = Vec::new();
        for record in self.buffer.read_from(1).unwrap() {
            let record = BufferRecord::decode(&record.unwrap().1).unwrap();
            let request = ExportLogsServiceRequest::decode(record.payload.as_slice()).unwrap();
            for rl in request.resource_logs {
                for sl in rl.scope_logs {
                    for lr in sl.log_records {
                        if let Some(any_value::Value::StringValue(s)) =
                            lr.body.and_then(|b| b.value)
                        {
                            out.push(s);
                        }
                    }
                }
            }
        }
        out
    }

    fn close(mut self) {
        drop(self.source.take());
        self.writer.take().unwrap().join().unwrap();
    }
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

use std::io::Write;

#[test]
fn rename_rotation_reads_the_old_tail_then_the_new_file() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("a.log");
    append(&log, "1\n2\n");
    let mut h = Harness::new(tmp.path());
    h.step();
    append(&log, "3\n");
    std::fs::rename(&log, tmp.path().join("a.log.1")).unwrap();
    append(&tmp.path().join("a.log.1"), "4\n");
    append(&log, "5\n");
    h.step();
    h.step();
    assert_eq!(h.bodies(), ["1", "2", "3", "4", "5"]);
    assert_eq!(
        h.source.as_ref().unwrap().tailers.len(),
        2,
        "the rotated file stays open a while"
    );
    h.now += ROTATED_CLOSE_AFTER;
    h.step();
    let source = h.source.as_ref().unwrap();
    assert_eq!(source.tailers.len(), 1, "the rotated file is closed");
    h.close();
}

#[test]
fn copy_truncate_restarts_at_zero_and_a_matching_copy_is_not_reread() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("b.log");
    let long = "x".repeat(300);
    append(&log, &format!("{long}\nb1\n"));
    let mut h = Harness::new(tmp.path());
    h.step();
    // The copy matches the pattern too: it must be recognised, not read again from 0.
    std::fs::copy(&log, tmp.path().join("b-copy.log")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, "c1\n");
    h.step();
    assert_eq!(h.bodies(), [long.as_str(), "b1", "c1"]);
    h.close();
}

#[test]
fn restart_resumes_at_the_checkpoint_without_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("c.log");
    append(&log, "1\n2\npartial");
    let mut h = Harness::new(tmp.path());
    h.step();
    assert_eq!(h.bodies(), ["1", "2"]);
    h.close();
    append(&log, " line\n3\n");
    let mut h = Harness::new(tmp.path());
    h.step();
    assert_eq!(h.bodies(), ["1", "2", "partial line", "3"]);
    h.close();
}

#[test]
fn positions_in_the_buffer_win_over_a_stale_checkpoint_file() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("d.log");
    append(
        &log, "1
2
",
    );
    let mut h = Harness::new(tmp.path());
    h.step();
    h.close();
    // A crash between the buffer's fsync and the checkpoint write leaves the file behind.
    let checkpoint = tmp.path().join("data/checkpoints.json");
    Checkpoints::default().store(&checkpoint).unwrap();
    append(&log, "3\n");
    let mut h = Harness::new(tmp.path());
    h.step();
    assert_eq!(h.bodies(), ["1", "2", "3"]);
    assert_eq!(Checkpoints::load(&checkpoint).unwrap().buffer_seq, 2);
    h.close();
}

/// A 300-byte start-up banner (three lines of 100 bytes), the same in every run of the app.
fn banner() -> String {
    (1..=3)
        .map(|i| format!("{:-<99}\n", format!("app 1.0 start-up banner line {i} ")))
        .collect()
}

/// `text`'s lines.
fn split(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// Lines `{tag}{i}` for `range`.
fn tagged(tag: &str, range: std::ops::Range<u32>) -> String {
    range.map(|i| format!("{tag}{i}\n")).collect()
}

/// How a file changes between two reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The new text is appended.
    Grow,
    /// The file is deleted and created again with the new text (the inode may be reused).
    Recreate,
    /// The file is truncated and the new text written in place (the same inode for sure).
    Rewrite,
}

fn apply(path: &Path, change: Change, text: &str) {
    match change {
        Change::Grow => append(path, text),
        Change::Recreate => {
            std::fs::remove_file(path).unwrap();
            std::fs::write(path, text).unwrap();
        }
        Change::Rewrite => std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap(),
    }
}

/// Whether files created in `dir` get birth times.
fn birth_times_in(dir: &Path) -> bool {
    let probe = dir.join("probe");
    std::fs::write(&probe, "").unwrap();
    let known = identity::birth_time(&std::fs::metadata(&probe).unwrap()).is_some();
    std::fs::remove_file(&probe).unwrap();
    known
}

/// `a.log` holds `old` and is read; then, with the source stopped (`restart`) or running, it goes through `change`
/// with `new`: the buffer then holds `expected`'s lines, in order.
fn check(restart: bool, old: &str, change: Change, new: &str, expected: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("a.log");
    append(&log, old);
    let mut h = Harness::new(tmp.path());
    h.step();
    if restart {
        h.close();
        apply(&log, change, new);
        h = Harness::new(tmp.path());
    } else {
        apply(&log, change, new);
    }
    h.step();
    h.step();
    assert_eq!(
        h.bodies(),
        split(expected),
        "restart {restart}, {change:?} of {} bytes into {} bytes",
        old.len(),
        new.len()
    );
    h.close();
}

#[test]
fn a_file_created_again_or_rewritten_is_never_taken_for_the_old_one() {
    use Change::*;
    let b = banner();
    let tiny = "BOOT v1.0\n"; // the whole file is shorter than the fingerprint
    let a5 = format!("{b}{}", tagged("a", 0..5));
    let a20 = format!("{b}{}", tagged("a", 0..20));
    let b20 = format!("{b}{}", tagged("b", 0..20));
    let b3 = format!("{b}{}", tagged("b", 0..3));
    let ta2 = format!("{tiny}{}", tagged("a", 0..2));
    let tb20 = format!("{tiny}{}", tagged("b", 0..20));
    let tb1 = format!("{tiny}{}", tagged("b", 0..1));
    #[rustfmt::skip]
    let cases: [(Change, &str, &str, String); 10] = [
        // Only growth: resumed exactly, nothing read twice, nothing skipped.
        (Grow, &a5, &tagged("a", 5..25), format!("{a5}{}", tagged("a", 5..25))),
        (Grow, &ta2, &tagged("a", 2..40), format!("{ta2}{}", tagged("a", 2..40))),
        // The same banner and more bytes than the offset (the case), deleted or rewritten in place.
        (Recreate, &a5, &b20, format!("{a5}{b20}")),
        (Rewrite, &a5, &b20, format!("{a5}{b20}")),
        // Shorter than the offset.
        (Recreate, &a20, &b3, format!("{a20}{b3}")),
        (Rewrite, &a20, &b3, format!("{a20}{b3}")),
        // Shorter than the fingerprint, with a 10-byte banner.
        (Recreate, &ta2, &tb20, format!("{ta2}{tb20}")),
        (Rewrite, &ta2, &tb20, format!("{ta2}{tb20}")),
        (Rewrite, &ta2, &tb1, format!("{ta2}{tb1}")),
        // Growth after nothing but the banner was read.
        (Grow, &b, &tagged("b", 0..20), b20.clone()),
    ];
    for restart in [true, false] {
        for (change, old, new, expected) in &cases {
            check(restart, old, *change, new, expected);
        }
    }
    // Nothing but the banner was read, then the file was deleted and created again with more. While the source
    // runs, its open descriptor keeps the old inode from being reused; while it is stopped, only the birth time
    // tells the new file apart from the old one grown.
    for (old, new) in [(b.as_str(), b20.as_str()), (tiny, tb20.as_str())] {
        check(false, old, Recreate, new, &format!("{old}{new}"));
        if birth_times_in(&std::env::temp_dir()) {
            check(true, old, Recreate, new, &format!("{old}{new}"));
        } else {
            eprintln!(
                "this filesystem reports no birth times: a file created again after only its banner was read is resumed"
            );
        }
    }
}

#[test]
fn a_new_file_with_a_truncated_files_banner_is_not_taken_for_its_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let b = banner();
    let (log, other) = (tmp.path().join("b.log"), tmp.path().join("c.log"));
    append(&log, &format!("{b}{}", tagged("a", 0..5)));
    let mut h = Harness::new(tmp.path());
    h.step();
    // Copy-truncate with the copy out of the patterns' reach, then another instance of the app starts its log.
    std::fs::copy(&log, tmp.path().join("b.log.1")).unwrap();
    apply(&log, Change::Rewrite, &tagged("n", 0..2));
    append(&other, &format!("{b}{}", tagged("c", 0..20)));
    // A full batch ends a pass early: enough passes for both files.
    for _ in 0..3 {
        h.step();
    }
    let mut bodies = h.bodies();
    bodies.sort();
    let mut expected = split(&format!(
        "{b}{}{}{b}{}",
        tagged("a", 0..5),
        tagged("n", 0..2),
        tagged("c", 0..20)
    ));
    expected.sort();
    assert_eq!(bodies, expected);
    h.close();
}

#[test]
fn positions_saved_by_an_earlier_agent_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("a.log");
    let b = banner();
    append(&log, &format!("{b}{}", tagged("a", 0..5)));
    let mut h = Harness::new(tmp.path());
    h.step();
    h.close();
    // What an agent before tail checksums and birth times wrote: neither field.
    let path = tmp.path().join("data/checkpoints.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for file in json["files"].as_array_mut().unwrap() {
        let file = file.as_object_mut().unwrap();
        assert!(file.remove("tail").is_some());
        file.remove("born_unix_nanos");
    }
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    append(&log, &tagged("a", 5..9));
    let mut h = Harness::new(tmp.path());
    h.step();
    assert_eq!(h.bodies(), split(&format!("{b}{}", tagged("a", 0..9))));
    h.close();
}

#[test]
fn a_file_rotated_while_stopped_is_finished_but_one_that_took_its_inode_is_not_read() {
    let check = |took_inode: bool| {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("a.log");
        append(&log, &tagged("a", 0..3));
        let mut h = Harness::new(tmp.path());
        h.step();
        h.close();
        let rotated = tmp.path().join("a.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        append(&rotated, &tagged("a", 3..5));
        let mut expected = tagged("a", 0..5);
        if took_inode {
            // `a.log.1` plays a file that took the inode of a deleted `a.log`: what the checkpoint saved of
            // `a.log` no longer matches it.
            std::fs::write(&rotated, tagged("x", 0..9)).unwrap();
            expected = tagged("a", 0..3);
        }
        let mut h = Harness::new(tmp.path());
        h.step();
        assert_eq!(h.bodies(), split(&expected), "took the inode: {took_inode}");
        h.close();
    };
    check(false);
    check(true);
}

#[test]
fn a_rewrite_in_place_is_seen_by_the_next_read_before_any_scan() {
    // The file is read every 100 ms but scanned for truncation every second: the read itself must notice that the
    // bytes before its offset changed, or it would ship the middle of the new content and skip its start.
    let b = banner();
    let tiny = "BOOT v1.0\n";
    #[rustfmt::skip]
    let cases = [
        (format!("{b}{}", tagged("a", 0..5)), format!("{b}{}", tagged("b", 0..40))),
        (format!("{b}{}", tagged("a", 0..20)), format!("{b}{}", tagged("b", 0..3))),
        (format!("{tiny}{}", tagged("a", 0..2)), format!("{tiny}{}", tagged("b", 0..20))),
        (format!("{b}{}", tagged("a", 0..400)), format!("{b}{}", tagged("b", 0..800))),
    ];
    for (old, new) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("a.log");
        append(&log, &old);
        let mut h = Harness::new(tmp.path());
        h.step();
        apply(&log, Change::Rewrite, &new);
        h.read_only();
        h.step();
        assert_eq!(
            h.bodies(),
            split(&format!("{old}{new}")),
            "{} bytes rewritten with {} bytes",
            old.len(),
            new.len()
        );
        h.close();
    }
}
