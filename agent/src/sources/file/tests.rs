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
        let source = FileSource::recover(&config, buffer.clone(), tx, telemetry).unwrap();
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
