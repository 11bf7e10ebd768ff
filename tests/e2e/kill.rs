//! Crash safety: SIGKILL the plane at random moments while clients stream numbered log batches; every acknowledged record must survive exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::watch;

use crate::harness::api::{CT_PROTOBUF, Port, Signal, http_client, wait_until};
use crate::harness::exchange::{Post, Reply, check};
use crate::harness::otlp::{kv, kv_int, log_record, logs_request, now_nanos};
use crate::harness::process::fresh_plane;
use crate::harness::unique;

/// Concurrent senders; each owns a contiguous range of sequence numbers.
const SENDERS: usize = 2;
/// Records per batch.
const BATCH: usize = 20;
/// Batches per sender.
const BATCHES_PER_SENDER: usize = 100;
/// Total records: SENDERS * BATCHES_PER_SENDER * BATCH = 4,000.
const TOTAL: usize = SENDERS * BATCHES_PER_SENDER * BATCH;
/// Kills while the senders run (one more happens after they finish).
const KILLS_DURING: usize = 4;
/// Give up on one batch after this many failed attempts (the plane is never down that long).
const MAX_ATTEMPTS: usize = 2_000;

/// Sends batches `first_batch..first_batch + BATCHES_PER_SENDER`, each retried (same
/// `Gantry-Batch-Id`) until it gets a 200. Returns how many attempts failed.
async fn sender(
    run: String,
    token: String,
    first_batch: usize,
    url: watch::Receiver<String>,
    acked: Arc<AtomicUsize>,
) -> Result<usize> {
    let client = http_client();
    let mut failures = 0;
    for b in first_batch..first_batch + BATCHES_PER_SENDER {
        let now = now_nanos();
        let records = (0..BATCH)
            .map(|i| {
                let seq = b * BATCH + i;
                log_record(
                    &format!("seq-{seq}"),
                    now + i as u64,
                    vec![kv_int("seq", seq as i64), kv("run", &run)],
                )
            })
            .collect();
        let body = prost::Message::encode_to_vec(&logs_request("killsvc", records));
        let batch_id = format!("{run}-batch-{b}");
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > MAX_ATTEMPTS {
                bail!("batch {b} never got a 200 in {MAX_ATTEMPTS} attempts");
            }
            let target = format!("{}/v1/logs", url.borrow().clone());
            let res = client
                .post(&target)
                .header("Content-Type", CT_PROTOBUF)
                .header("Gantry-Batch-Id", &batch_id)
                .bearer_auth(&token)
                .timeout(Duration::from_secs(10))
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(resp) if resp.status().as_u16() == 200 => break,
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // Overload or shutting down is fine; anything else is a bug.
                    ensure!(
                        matches!(status, 429 | 503),
                        "batch {b}: unexpected {status}: {}",
                        resp.text().await.unwrap_or_default()
                    );
                }
                Err(_) => {} // connection refused / reset while the plane is down
            }
            failures += 1;
            // Back off briefly before retrying (the plane may be restarting).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked.fetch_add(BATCH, Ordering::SeqCst);
    }
    Ok(failures)
}

/// Two senders stream numbered batches, each retried with its batch id until acknowledged, while the plane is
/// SIGKILLed and restarted at random points of progress: every record is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_exactly_once() -> Result<()> {
    // Tokens live in the data dir, so they survive restarts.
    let (_tmp, mut plane, ingest, viewer) = fresh_plane().await?;
    let run = unique("k");

    let (url_tx, url_rx) = watch::channel(plane.endpoints.otlp_http_url());
    let acked = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..SENDERS {
        let task = sender(
            run.clone(),
            ingest.clone(),
            s * BATCHES_PER_SENDER,
            url_rx.clone(),
            acked.clone(),
        );
        let finished = finished.clone();
        senders.spawn(async move {
            let r = task.await;
            finished.fetch_add(1, Ordering::SeqCst);
            r
        });
    }

    // Kill at random points of progress, spread over the run.
    let mut kill_points: Vec<usize> = (0..KILLS_DURING)
        .map(|k| {
            let slot = TOTAL / (KILLS_DURING + 1);
            slot * k + rand::random_range(slot / 2..slot + slot / 2)
        })
        .collect();
    kill_points.sort_unstable();
    let mut kills = 0;
    for point in kill_points {
        let reached = wait_until(Duration::from_secs(120), "sender progress", || {
            let (acked, finished) = (&acked, &finished);
            async move {
                let n = acked.load(Ordering::SeqCst);
                let done = finished.load(Ordering::SeqCst) == SENDERS;
                Ok((n >= point || done).then_some((n, done)))
            }
        })
        .await?;
        if reached.1 {
            break; // all senders ended (or one failed: joined below)
        }
        plane.kill9()?;
        kills += 1;
        plane
            .restart()
            .await
            .with_context(|| format!("restart after kill #{kills}"))?;
        url_tx.send_replace(plane.endpoints.otlp_http_url());
    }

    let mut failed_attempts = 0;
    while let Some(r) = senders.join_next().await {
        failed_attempts += r??;
    }
    ensure!(
        acked.load(Ordering::SeqCst) == TOTAL,
        "not every batch was acknowledged"
    );
    // One more kill right after the last acknowledgement: replay must not duplicate anything.
    plane.kill9()?;
    kills += 1;
    plane
        .restart()
        .await
        .context("restart after the final kill")?;
    eprintln!(
        "kill test: {TOTAL} records, {kills} SIGKILLs, {failed_attempts} failed send attempts"
    );

    // Every acknowledged record is there exactly once.
    let q = format!("run:{run}");
    let last = std::sync::Mutex::new(String::new());
    let counts = wait_until(Duration::from_secs(30), "all records searchable", || {
        let (plane, viewer, q, last) = (&plane, &viewer, &q, &last);
        async move {
            let all = plane.all_logs(viewer, q, "-1h").await?;
            let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
            for hit in &all {
                let body = hit["body"].as_str().unwrap_or_default();
                let seq = body
                    .strip_prefix("seq-")
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("unexpected hit {hit}"))?;
                *counts.entry(seq).or_default() += 1;
            }
            let missing = (0..TOTAL).filter(|s| !counts.contains_key(s)).count();
            *last.lock().expect("lock") = format!(
                "{} hits, {} distinct, {missing} missing",
                all.len(),
                counts.len()
            );
            Ok((missing == 0).then_some(counts))
        }
    })
    .await
    .with_context(|| format!("last look: {}", last.lock().expect("lock")))?;
    let dups: Vec<(usize, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    ensure!(
        dups.is_empty(),
        "{} records are stored more than once (seq, copies), first ones: {:?}",
        dups.len(),
        &dups[..dups.len().min(20)]
    );
    ensure!(
        counts.len() == TOTAL && counts.keys().all(|s| *s < TOTAL),
        "unexpected sequence numbers"
    );
    Ok(())
}

/// A batch acknowledged before a SIGKILL and re-sent with the same `Gantry-Batch-Id` after the
/// restart is still stored once (the idempotency keys survive a crash).
#[tokio::test]
async fn batch_id_dedup_survives_sigkill() -> Result<()> {
    let (_tmp, mut plane, ingest, viewer) = fresh_plane().await?;
    let word = unique("crashdedup");
    let body = prost::Message::encode_to_vec(&logs_request(
        "killsvc",
        (0..3)
            .map(|i| log_record(&format!("{word} {i}"), now_nanos(), vec![]))
            .collect(),
    ));
    let batch_id = unique("crash-batch-");
    let post = || {
        Post::new(Port::OtlpHttp, Signal::Logs, CT_PROTOBUF, &body)
            .header("Gantry-Batch-Id", &batch_id)
    };
    check(&plane, &ingest, post(), Reply::Accepted).await?;
    plane.kill9()?;
    plane.restart().await?;
    check(&plane, &ingest, post(), Reply::Accepted)
        .await
        .context("re-sending an acknowledged batch after a crash")?;
    // A marker sent afterwards: once it is visible, the re-send is indexed too.
    let marker = unique("crashmarker");
    plane
        .send_logs(
            Port::OtlpHttp,
            &ingest,
            &logs_request("killsvc", vec![log_record(&marker, now_nanos(), vec![])]),
        )
        .await?;
    plane.wait_for_logs(&viewer, &marker, 1).await?;
    let all = plane.all_logs(&viewer, &word, "-1h").await?;
    ensure!(
        all.len() == 3,
        "the 3 records of a batch sent before and after a SIGKILL with one Gantry-Batch-Id \
         should be stored once, found {} hits",
        all.len()
    );
    Ok(())
}
