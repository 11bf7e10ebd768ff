//! The agent's file source end to end: lines tailed through rotations and multi-line records reach the real plane
//! in order, an outage with an agent crash loses and repeats nothing, and a file created again or rewritten in place
//! is read from its start while one that only grew resumes.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{DELIVERY_TIMEOUT, append, log_dir, numbered, parse_hits, wait_for_at_least};
use crate::harness::api::wait_until;
use crate::harness::process::{Agent, Plane, free_port, fresh_plane, start_with_tokens};
use crate::harness::unique;

/// Every tag has seqs 0..expected[tag] exactly once, and its timestamps increase with seq.
fn check_complete_in_order(
    hits: &[(String, u32, i64, String)],
    expected: &[(&str, u32)],
) -> Result<()> {
    for (tag, n) in expected {
        let mut rows: Vec<(u32, i64)> = hits
            .iter()
            .filter(|h| h.0 == *tag)
            .map(|h| (h.1, h.2))
            .collect();
        rows.sort();
        let seqs: Vec<u32> = rows.iter().map(|r| r.0).collect();
        ensure!(
            seqs == (0..*n).collect::<Vec<_>>(),
            "file {tag}: expected seqs 0..{n} once each, got {} rows: {seqs:?}",
            seqs.len()
        );
        for pair in rows.windows(2) {
            ensure!(
                pair[0].1 <= pair[1].1,
                "file {tag}: line {} has a later timestamp than line {} (read out of order)",
                pair[0].0,
                pair[1].0
            );
        }
    }
    Ok(())
}

/// Lines appended to files arrive through a rename rotation, a copy-truncate rotation and a
/// multi-line stack trace, each once and in order per file; SIGTERM exits 0.
#[tokio::test]
async fn file_lines_arrive_through_rotations_in_order() -> Result<()> {
    let (tmp, plane, ingest, viewer) = fresh_plane().await?;
    let (logs, glob) = log_dir(tmp.path())?;
    let run = unique("agentrun");
    let (a, b, c) = (logs.join("a.log"), logs.join("b.log"), logs.join("c.log"));
    append(&a, &numbered(&run, "a", 0..100))?;
    append(&b, &numbered(&run, "b", 0..50))?;
    let mut agent = Agent::start(
        &tmp.path().join("agent"),
        &plane.endpoints.http_url(),
        &ingest,
        &[glob],
    )
    .await?;
    wait_for_at_least(&plane, &viewer, &run, 150).await?;

    // Rename rotation: the tail of the old file, then the new file from 0.
    append(&a, &numbered(&run, "a", 100..150))?;
    std::fs::rename(&a, logs.join("a.log.1"))?;
    append(&a, &numbered(&run, "a", 150..200))?;
    // A new file picked up while running, with a multi-line stack trace.
    append(
        &c,
        &format!(
            "{run} c 00000 Exception in thread main java.lang.IllegalStateException: boom\n\
             \tat com.example.Foo.bar(Foo.java:10)\n\
             \tat com.example.Main.main(Main.java:3)\n\
             Caused by: java.io.IOException: disk\n\
             \t... 2 more\n\
             {run} c 00001 after the trace\n"
        ),
    )?;
    // Copy-truncate, once the agent has read the file (lines written between the copy and the
    // truncation are lost by design of copy-truncate, so none are).
    wait_for_at_least(&plane, &viewer, &run, 200).await?;
    std::fs::copy(&b, logs.join("b.log.1"))?;
    OpenOptions::new().write(true).open(&b)?.set_len(0)?;
    append(&b, &numbered(&run, "b", 50..60))?;

    let hits = wait_for_at_least(&plane, &viewer, &run, 262).await?;
    let parsed = parse_hits(&run, &hits);
    check_complete_in_order(&parsed, &[("a", 200), ("b", 60), ("c", 2)])?;
    ensure!(
        hits.len() == 262,
        "expected 262 records, got {}",
        hits.len()
    );
    let trace = parsed
        .iter()
        .find(|h| h.0 == "c" && h.1 == 0)
        .context("trace record")?;
    ensure!(
        trace
            .3
            .contains("\n\tat com.example.Foo.bar(Foo.java:10)\n")
            && trace
                .3
                .ends_with("Caused by: java.io.IOException: disk\n\t... 2 more"),
        "the stack trace must be one record: {:?}",
        trace.3
    );
    let any = hits
        .iter()
        .find(|h| h["body"].as_str().is_some_and(|b| b.ends_with(" a 00199")))
        .context("a 00199")?;
    ensure!(
        any["resource"]["service.name"] == "a"
            && any["resource"]["log.file.path"] == a.to_string_lossy().as_ref()
            && !any["resource"]["host.name"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
        "resource attributes: {any}"
    );

    let metrics = agent.metrics().await?;
    // The `--file` pattern's series (the agent also tails its instances' output under another pattern).
    let lines_read = metrics
        .iter()
        .find(|(k, _)| k.starts_with("gantry_agent_lines_read_total{") && k.contains("/logs/"))
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    ensure!(
        lines_read >= 266.0,
        "lines read: {lines_read} in {metrics:?}"
    );
    let status = agent.terminate().await?;
    ensure!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    Ok(())
}

/// The plane goes away for a minute while lines keep coming, the agent is SIGKILLed and restarted during the
/// outage, the plane comes back on the same data dir and address: every line arrives once.
#[tokio::test]
async fn outage_and_agent_crash_lose_and_repeat_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let (mut plane, [ingest, viewer]) = start_with_tokens(
        &tmp.path().join("plane"),
        &["--http-addr", &addr],
        &[],
        ["ingest", "viewer"],
    )
    .await?;
    let (logs, glob) = log_dir(tmp.path())?;
    let run = unique("outage");
    let file = logs.join("svc.log");
    append(&file, &numbered(&run, "s", 0..100))?;
    let mut agent = Agent::start(
        &tmp.path().join("agent"),
        &format!("http://{addr}"),
        &ingest,
        &[glob],
    )
    .await?;
    wait_for_at_least(&plane, &viewer, &run, 100).await?;

    // The outage: a minute without the plane while a line arrives every 100 ms; the agent is SIGKILLed 20 s in
    // and restarted 5 s later.
    plane.terminate().await?;
    let outage_started = Instant::now();
    let writer = {
        let (file, run) = (file.clone(), run.clone());
        tokio::spawn(async move {
            for i in 100..700 {
                append(&file, &numbered(&run, "s", i..i + 1))?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };
    let appends_before = agent
        .metrics()
        .await?
        .get("gantry_agent_buffer_appends_total")
        .copied()
        .unwrap_or(0.0);
    wait_until(
        DELIVERY_TIMEOUT,
        "the agent to buffer lines during the outage",
        || async {
            let m = agent.metrics().await?;
            Ok((m
                .get("gantry_agent_buffer_appends_total")
                .copied()
                .unwrap_or(0.0)
                > appends_before)
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage_started.elapsed())).await;
    agent.kill9()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    agent.spawn().await?;
    writer.await??;
    append(&file, &numbered(&run, "s", 700..800))?;
    eprintln!(
        "outage test: the plane was down for {:?}",
        outage_started.elapsed()
    );
    plane.restart().await?;
    ensure!(
        plane.endpoints.http == addr,
        "the plane moved to {}",
        plane.endpoints.http
    );

    wait_for_at_least(&plane, &viewer, &run, 800).await?;
    // Duplicates could still be on their way: count only once the agent has nothing left unshipped.
    wait_until(
        DELIVERY_TIMEOUT,
        "the agent to have shipped everything",
        || async {
            let m = agent.metrics().await?;
            Ok(
                (m.get("gantry_agent_buffer_unshipped_batches").copied() == Some(0.0))
                    .then_some(()),
            )
        },
    )
    .await?;
    let hits = wait_for_at_least(&plane, &viewer, &run, 800).await?;
    let parsed = parse_hits(&run, &hits);
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for h in &parsed {
        *counts.entry(h.1).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "outage test: {} records, {duplicates} duplicates",
        parsed.len()
    );
    let missing: Vec<u32> = (0..800).filter(|i| !counts.contains_key(i)).collect();
    ensure!(missing.is_empty(), "missing lines: {missing:?}");
    ensure!(
        duplicates == 0,
        "{duplicates} duplicate records: {counts:?}"
    );
    let metrics = agent.metrics().await?;
    ensure!(
        metrics
            .get("gantry_agent_sent_batches_total")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{metrics:?}"
    );
    Ok(())
}

/// How a file changes between two reads by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Lines are appended.
    Grow,
    /// The file is deleted and created again (the filesystem may give it the old inode).
    Recreate,
    /// The file is truncated and written again in place (the same inode for sure).
    Rewrite,
}

/// One file: its start-up banner, the lines the agent reads before it stops, what then happens to the file and the
/// lines it holds after the banner afterwards.
struct Case {
    file: &'static str,
    banner: String,
    old: Range<u32>,
    change: Change,
    new: Range<u32>,
}

/// What each file's records should be: (log.file.path, body) -> how many times.
type Counts = BTreeMap<(String, String), usize>;

impl Case {
    fn tag(&self) -> &str {
        self.file.trim_end_matches(".log")
    }

    /// Writes `lines` (after the banner unless the file only grows) as `change` does; adds what should arrive.
    fn write(
        &self,
        logs: &Path,
        run: &str,
        change: Change,
        lines: Range<u32>,
        expected: &mut Counts,
    ) -> Result<()> {
        let path = logs.join(self.file);
        let numbered = numbered(run, self.tag(), lines);
        let text = match change {
            Change::Grow => numbered,
            Change::Recreate | Change::Rewrite => format!("{}{numbered}", self.banner),
        };
        let inode = std::fs::metadata(&path).map(|m| m.ino()).ok();
        match change {
            Change::Grow => append(&path, &text)?,
            Change::Recreate => {
                std::fs::remove_file(&path)?;
                std::fs::write(&path, &text)?;
            }
            // One write after the truncation: whether the agent sees the file empty or written, it reads it from 0.
            Change::Rewrite => OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)?
                .write_all(text.as_bytes())?,
        }
        if change == Change::Recreate {
            let now = std::fs::metadata(&path)?.ino();
            eprintln!(
                "{}: created again with inode {now}, was {inode:?}",
                self.file
            );
        }
        for line in text.lines() {
            *expected
                .entry((path.to_string_lossy().into_owned(), line.to_owned()))
                .or_default() += 1;
        }
        Ok(())
    }
}

/// Every record at the plane, counted by (log.file.path, body).
async fn counts(plane: &Plane, token: &str) -> Result<Counts> {
    let mut out = Counts::new();
    for hit in plane.all_logs(token, "*", "-1h").await? {
        let path = hit["resource"]["log.file.path"]
            .as_str()
            .context("log.file.path")?;
        let body = hit["body"].as_str().context("body")?;
        *out.entry((path.to_owned(), body.to_owned())).or_default() += 1;
    }
    Ok(out)
}

/// Waits until the plane holds as many records as `expected` and the agent has nothing left to ship (a duplicate
/// would be on its way otherwise), then checks each record arrived exactly as often as expected; on a timeout, says
/// which did not.
async fn check_exactly(
    plane: &Plane,
    agent: &Agent,
    viewer: &str,
    expected: &Counts,
) -> Result<()> {
    let total: usize = expected.values().sum();
    let mut waited = wait_for_at_least(plane, viewer, "*", total).await.map(drop);
    if waited.is_ok() {
        waited = wait_until(
            DELIVERY_TIMEOUT,
            "the agent to have shipped everything",
            || async {
                let m = agent.metrics().await?;
                Ok(
                    (m.get("gantry_agent_buffer_unshipped_batches").copied() == Some(0.0))
                        .then_some(()),
                )
            },
        )
        .await;
    }
    let got = counts(plane, viewer).await?;
    let wrong: Vec<String> = expected
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter_map(|key| {
            let (want, have) = (
                expected.get(key).copied().unwrap_or(0),
                got.get(key).copied().unwrap_or(0),
            );
            (want != have).then(|| format!("{} {:?}: expected {want}, got {have}", key.0, key.1))
        })
        .collect();
    ensure!(
        wrong.is_empty(),
        "{} of {} records arrived a wrong number of times:\n{}\n{}",
        wrong.len(),
        total,
        wrong.join("\n"),
        agent.stderr()
    );
    waited
}

/// Files deleted and created again or truncated and rewritten while the agent is stopped, with the same start-up
/// banner (300 bytes, or 10 for files shorter than the fingerprint) and more or fewer bytes than the agent had read,
/// are read from their start; files that only grew resume exactly; the same while the agent runs. Every record
/// arrives exactly as often as it was written.
#[tokio::test]
async fn a_file_created_again_or_rewritten_is_read_from_its_start_and_a_grown_one_resumes()
-> Result<()> {
    use Change::*;
    let (tmp, plane, ingest, viewer) = fresh_plane().await?;
    let (logs, glob) = log_dir(tmp.path())?;
    let run = unique("ident");
    // Three 100-byte lines, the same in every run of the app.
    let banner: String = (1..=3)
        .map(|i| format!("{:-<99}\n", format!("{run} banner {i} app 1.0 starting ")))
        .collect();
    let tiny = "BOOT v1.0\n".to_owned();
    let case = |file, banner: &String, old, change, new| Case {
        file,
        banner: banner.clone(),
        old,
        change,
        new,
    };
    let cases = [
        // The case, and the same inode for sure.
        case("recreated.log", &banner, 0..5, Recreate, 5..25),
        case("rewritten.log", &banner, 0..5, Rewrite, 5..25),
        // Shorter than what the agent had read.
        case("recreated-shorter.log", &banner, 0..20, Recreate, 20..23),
        case("rewritten-shorter.log", &banner, 0..20, Rewrite, 20..23),
        // Shorter than the fingerprint when the agent stopped.
        case("tiny-recreated.log", &tiny, 0..2, Recreate, 2..22),
        case("tiny-rewritten.log", &tiny, 0..2, Rewrite, 2..22),
        // Plain growth.
        case("grown.log", &banner, 0..5, Grow, 5..25),
        case("tiny-grown.log", &tiny, 0..2, Grow, 2..22),
    ];
    let mut expected = Counts::new();
    for c in &cases {
        let path = logs.join(c.file);
        std::fs::File::create(&path)?;
        c.write(&logs, &run, Rewrite, c.old.clone(), &mut expected)?;
    }
    let mut agent = Agent::start(
        &tmp.path().join("agent"),
        &plane.endpoints.http_url(),
        &ingest,
        &[glob],
    )
    .await?;
    check_exactly(&plane, &agent, &viewer, &expected).await?;
    let status = agent.terminate().await?;
    ensure!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );

    for c in &cases {
        c.write(&logs, &run, c.change, c.new.clone(), &mut expected)?;
    }
    agent.spawn().await?;
    check_exactly(&plane, &agent, &viewer, &expected).await?;

    // While the agent runs: created again (another inode, the agent holds the old one open) and rewritten in place
    // with more bytes than were read, rewritten shorter, grown.
    for c in &cases[..2] {
        c.write(&logs, &run, c.change, 100..140, &mut expected)?;
    }
    cases[5].write(&logs, &run, Rewrite, 100..101, &mut expected)?;
    cases[6].write(&logs, &run, Grow, 100..120, &mut expected)?;
    check_exactly(&plane, &agent, &viewer, &expected).await?;
    Ok(())
}

/// 100 files, each created, written and deleted within 50 ms: the agent opens each as it appears (file events, not
/// only the scan every second), reads it after its deletion, and counts any it could not open. Every line is
/// either delivered or its file counted as missed; nearly all are delivered.
#[tokio::test]
async fn short_lived_files_are_read_or_counted() -> Result<()> {
    const FILES: u32 = 100;
    const LINES: u32 = 10;
    let (tmp, plane, ingest, viewer) = fresh_plane().await?;
    let (logs, glob) = log_dir(tmp.path())?;
    let run = unique("shortlived");
    let agent = Agent::start(
        &tmp.path().join("agent"),
        &plane.endpoints.http_url(),
        &ingest,
        &[glob],
    )
    .await?;
    for i in 0..FILES {
        let path = logs.join(format!("job-{i:03}.log"));
        append(&path, &numbered(&run, &format!("f{i:03}"), 0..LINES))?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::remove_file(&path)?;
    }
    // Everything the agent read reaches the plane; then the counts must add up.
    let settled = wait_until(DELIVERY_TIMEOUT, "the agent to settle", || async {
        let m = agent.metrics().await?;
        let unshipped = m.get("gantry_agent_buffer_unshipped_batches").copied();
        let delivered = plane.all_logs(&viewer, &run, "-1h").await?.len() as u32;
        let missed = m
            .iter()
            .filter(|(k, _)| k.starts_with("gantry_agent_files_missed_total"))
            .map(|(_, v)| *v as u32)
            .sum::<u32>();
        Ok(
            (unshipped == Some(0.0) && delivered + missed * LINES == FILES * LINES)
                .then_some((delivered, missed)),
        )
    })
    .await
    .context("delivered lines and missed files never added up to every line written")?;
    let (delivered, missed) = settled;
    eprintln!("short-lived files: {delivered} lines delivered, {missed} files counted as missed");
    ensure!(
        delivered >= FILES * LINES * 9 / 10,
        "only {delivered} of {} lines of short-lived files were delivered ({missed} files counted as missed)",
        FILES * LINES
    );
    let hits = plane.all_logs(&viewer, &run, "-1h").await?;
    let parsed = parse_hits(&run, &hits);
    let mut unique_lines: Vec<(String, u32)> =
        parsed.iter().map(|(t, s, _, _)| (t.clone(), *s)).collect();
    unique_lines.sort();
    unique_lines.dedup();
    ensure!(
        unique_lines.len() == parsed.len(),
        "a line was delivered twice"
    );
    Ok(())
}
