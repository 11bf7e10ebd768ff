//! Configuration and lifecycle: unknown config keys are fatal, flag > env > file precedence, and SIGTERM drains, exits 0 and keeps acknowledged data.

mod common;

use anyhow::{Context, Result, ensure};
use common::*;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;

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
async fn rejected_two_hour_old_log(plane: &Plane) -> Result<i64> {
    let ingest = plane.token("ingest").await?;
    let req = logs_request(
        "retsvc",
        vec![log_record(
            "two hours old",
            now_nanos() - 2 * HOUR_NANOS,
            vec![],
        )],
    );
    let resp = plane.send_logs(Port::OtlpHttp, &ingest, &req).await?;
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
    let rejected = rejected_two_hour_old_log(&env_plane).await?;
    ensure!(
        rejected == 0,
        "GANTRY_RETENTION_HOURS=48 should override retention_hours=1: a 2 h old log was rejected"
    );
    let rejected = rejected_two_hour_old_log(&file_plane).await?;
    ensure!(
        rejected == 1,
        "retention_hours=1 from the file should reject a 2 h old log (rejected {rejected})"
    );
    Ok(())
}

/// SIGTERM → exit 0; everything acknowledged before is there after a restart.
#[tokio::test]
async fn sigterm_exits_zero_and_keeps_acknowledged_data() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut plane = Plane::start(&tmp.path().join("data")).await?;
    let ingest = plane.token("ingest").await?;
    let viewer = plane.token("viewer").await?;
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
    let path = format!("/api/v1/traces/{}", hex(&tid));
    let trace = wait_until(SEARCH_TIMEOUT, "the trace after restart", || async {
        let (status, body) = plane.api_get(&path, &viewer).await?;
        Ok((status == 200).then_some(body))
    })
    .await?;
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
