//! Configuration and lifecycle: unknown config keys are fatal, flag > env > file precedence, and SIGTERM drains, exits 0 and keeps acknowledged data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;

use crate::harness::api::{CT_PROTOBUF, Port, SEARCH_TIMEOUT, http_client, wait_until};
use crate::harness::otlp::{
    HOUR_NANOS, hex, kv, log_record, logs_request, make_span, now_nanos, random_span_id,
    random_trace_id, traces_request,
};
use crate::harness::process::{Plane, create_token, fresh_plane, run_plane_to_exit};
use crate::harness::unique;

/// An unknown key in the TOML config makes `gantry plane` exit non-zero naming the key.
#[tokio::test]
async fn unknown_config_key_is_fatal_and_named() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("gantry.toml");
    std::fs::write(
        &config,
        "max_queue_batches = 8\nretention_hours = 168\nfrobnicate_level_xyz = 3\n",
    )?;
    let (status, stderr) = run_plane_to_exit(
        &tmp.path().join("data"),
        &["--config", config.to_str().context("utf-8 path")?],
        &[],
    )
    .await?;
    ensure!(
        !status.success(),
        "gantry plane must refuse a config with an unknown key, but exited {status}"
    );
    ensure!(
        stderr.contains("frobnicate_level_xyz"),
        "stderr should name the unknown key `frobnicate_level_xyz`:\n{stderr}"
    );
    Ok(())
}

/// The IP the plane's HTTP listener bound (from endpoints.json).
fn http_ip(plane: &Plane) -> String {
    plane
        .endpoints
        .http
        .rsplit_once(':')
        .map(|(ip, _)| ip.to_string())
        .unwrap_or_default()
}

/// Sends one log 2 hours old; returns how many records were rejected.
async fn rejected_two_hour_old_log(plane: &Plane, ingest: &str) -> Result<i64> {
    let req = logs_request(
        "retsvc",
        vec![log_record(
            "two hours old",
            now_nanos() - 2 * HOUR_NANOS,
            vec![],
        )],
    );
    let resp = plane.send_logs(Port::OtlpHttp, ingest, &req).await?;
    Ok(resp.partial_success.map_or(0, |p| p.rejected_log_records))
}

/// `--http-addr` beats `GANTRY_HTTP_ADDR` beats `http_addr` in the file; `GANTRY_RETENTION_HOURS`
/// beats `retention_hours` in the file. Distinct loopback IPs (127.0.0.1/2/3, port 0) tell the
/// sources apart without fixed ports.
#[tokio::test]
async fn flag_beats_env_beats_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("gantry.toml");
    std::fs::write(
        &config,
        "http_addr = \"127.0.0.3:0\"\nretention_hours = 1\nmax_queue_batches = 64\n",
    )?;
    let config = config.to_str().context("utf-8 path")?;
    let env = [
        ("GANTRY_HTTP_ADDR", "127.0.0.2:0"),
        ("GANTRY_RETENTION_HOURS", "48"),
    ];
    let (flag_dir, env_dir, file_dir) = (
        tmp.path().join("flag"),
        tmp.path().join("env"),
        tmp.path().join("file"),
    );
    let mut ingest = Vec::new();
    for dir in [&env_dir, &file_dir] {
        std::fs::create_dir_all(dir)?;
        ingest.push(create_token(dir, "ingest", "retention-ingest").await?);
    }
    let flag_args = ["--config", config, "--http-addr", "127.0.0.1:0"];
    let file_args = ["--config", config];
    let (flag_plane, env_plane, file_plane) = tokio::try_join!(
        Plane::start_with(&flag_dir, &flag_args, &env),
        Plane::start_custom(&env_dir, &file_args, &env, &["--http-addr"]),
        Plane::start_custom(&file_dir, &file_args, &[], &["--http-addr"]),
    )?;

    ensure!(
        http_ip(&flag_plane) == "127.0.0.1",
        "flag should win over env and file: {:?}",
        flag_plane.endpoints
    );
    ensure!(
        http_ip(&env_plane) == "127.0.0.2",
        "env should win over the file: {:?}",
        env_plane.endpoints
    );
    ensure!(
        http_ip(&file_plane) == "127.0.0.3",
        "the file should apply when nothing else sets http_addr: {:?}",
        file_plane.endpoints
    );

    // retention_hours: env (48 h) beats the file (1 h).
    let rejected = rejected_two_hour_old_log(&env_plane, &ingest[0]).await?;
    ensure!(
        rejected == 0,
        "GANTRY_RETENTION_HOURS=48 should override retention_hours=1: a 2 h old log was rejected"
    );
    let rejected = rejected_two_hour_old_log(&file_plane, &ingest[1]).await?;
    ensure!(
        rejected == 1,
        "retention_hours=1 from the file should reject a 2 h old log (rejected {rejected})"
    );
    Ok(())
}

/// SIGTERM → exit 0; everything acknowledged before is there after a restart.
#[tokio::test]
async fn sigterm_exits_zero_and_keeps_acknowledged_data() -> Result<()> {
    let (_tmp, mut plane, ingest, viewer) = fresh_plane().await?;
    let tag = unique("term");
    let (batches, per_batch) = (5, 40);
    for b in 0..batches {
        let now = now_nanos();
        let records = (0..per_batch)
            .map(|i| {
                log_record(
                    &format!("term {b}-{i}"),
                    now + i as u64,
                    vec![kv("tag", &tag)],
                )
            })
            .collect();
        plane
            .send_logs(Port::OtlpHttp, &ingest, &logs_request("termsvc", records))
            .await?;
    }
    let tid = random_trace_id();
    let now = now_nanos();
    plane
        .send_traces(
            Port::Http,
            &ingest,
            &traces_request(
                "termsvc",
                vec![make_span(
                    &tid,
                    &random_span_id(),
                    &[],
                    "last-words",
                    SpanKind::Server,
                    now - 1_000_000,
                    now,
                    1,
                )],
            ),
        )
        .await?;

    // Immediately after the last acknowledgement.
    let status = plane.terminate().await?;
    ensure!(
        status.success(),
        "gantry plane should exit 0 on SIGTERM, got {status}\n{}",
        plane.stderr_tail(40)
    );

    plane.restart().await?;
    plane
        .wait_for_all_logs(&viewer, &format!("tag:{tag}"), batches * per_batch)
        .await?;
    let trace = plane.wait_for_trace(&viewer, &hex(&tid), 1).await?;
    ensure!(
        trace["spans"].as_array().is_some_and(|s| s.len() == 1)
            && trace["spans"][0]["name"] == json!("last-words"),
        "{trace}"
    );
    // A second clean stop also exits 0.
    let status = plane.terminate().await?;
    ensure!(status.success(), "second SIGTERM: exit {status}");
    Ok(())
}

/// SIGTERM while clients are sending: in-flight requests finish or are refused cleanly (never a
/// 500), the plane exits 0, and every batch that got a 200 is complete after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_ingesting_drains() -> Result<()> {
    const PER_BATCH: usize = 50;
    const MAX_BATCHES: usize = 400;
    let (_tmp, mut plane, ingest, viewer) = fresh_plane().await?;
    let run = unique("drain");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..2 {
        let (acked, bad) = (acked.clone(), bad.clone());
        let client = http_client();
        let url = plane.url(Port::OtlpHttp, "/v1/logs");
        let (run, token) = (run.clone(), ingest.clone());
        senders.spawn(async move {
            for b in 0..MAX_BATCHES {
                let tag = format!("{run}s{s}b{b}");
                let now = now_nanos();
                let records = (0..PER_BATCH)
                    .map(|i| {
                        log_record(
                            &format!("drain {i}"),
                            now + i as u64,
                            vec![kv("batch", &tag), kv("run", &run)],
                        )
                    })
                    .collect();
                let body = prost::Message::encode_to_vec(&logs_request("drainsvc", records));
                let res = client
                    .post(&url)
                    .header("Content-Type", CT_PROTOBUF)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(30))
                    .body(body)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().as_u16() == 200 => acked.lock().expect("lock").push(tag),
                    Ok(r) if matches!(r.status().as_u16(), 429 | 503) => {}
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        bad.lock()
                            .expect("lock")
                            .push(format!("{tag}: {status} {text}"));
                    }
                    Err(_) => return, // the plane is gone
                }
            }
        });
    }
    wait_until(
        SEARCH_TIMEOUT,
        "some batches to be acknowledged",
        || async { Ok((acked.lock().expect("lock").len() >= 10).then_some(())) },
    )
    .await?;
    let status = plane.terminate().await?;
    while let Some(r) = senders.join_next().await {
        r?;
    }
    ensure!(
        status.success(),
        "SIGTERM under load should still exit 0, got {status}\n{}",
        plane.stderr_tail(40)
    );
    let bad = bad.lock().expect("lock").clone();
    ensure!(
        bad.is_empty(),
        "unexpected responses while draining: {bad:?}"
    );
    let acked = acked.lock().expect("lock").clone();
    plane.restart().await?;
    let all = plane
        .wait_for_all_logs(&viewer, &format!("run:{run}"), acked.len() * PER_BATCH)
        .await
        .with_context(|| format!("{} acknowledged batches of {PER_BATCH}", acked.len()))?;
    let mut per_batch = BTreeMap::<String, usize>::new();
    for h in &all {
        let tag = h["attributes"]["batch"].as_str().unwrap_or("?").to_string();
        *per_batch.entry(tag).or_default() += 1;
    }
    for tag in &acked {
        ensure!(
            per_batch.get(tag) == Some(&PER_BATCH),
            "acknowledged batch {tag} has {:?} of {PER_BATCH} records after restart",
            per_batch.get(tag)
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_invalid_dashboard_file_stops_the_plane_with_its_file_line_and_field() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let boards = tmp.path().join("boards");
    std::fs::create_dir_all(&boards)?;
    std::fs::write(
        boards.join("good.yaml"),
        "title: Good\npanels:\n  - {title: Rate, type: red}\n",
    )?;
    std::fs::write(
        boards.join("ops.yaml"),
        "title: Ops\npanels:\n  - {title: Rate, type: red}\n  - {title: Errors, type: log_count, query: \"service:(x\"}\n",
    )?;
    let (status, stderr) = run_plane_to_exit(
        &tmp.path().join("data"),
        &["--dashboards", boards.to_str().context("utf-8 path")?],
        &[],
    )
    .await?;
    ensure!(
        !status.success(),
        "the plane must refuse an invalid dashboard, exited {status}"
    );
    ensure!(
        stderr.contains("ops.yaml:4:") && stderr.contains("panels[1].query"),
        "stderr names the file, line and field:\n{stderr}"
    );
    Ok(())
}
