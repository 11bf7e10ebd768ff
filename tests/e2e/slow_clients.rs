//! Slow clients against the plane's listeners: connections that send part of a request line and headers, then
//! nothing, more of them than the plane may open files. The plane closes what is past its connection cap, drops the
//! slow ones after the header-read timeout, and stays reachable for health checks and ingest throughout.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::api::{CT_PROTOBUF, Port};
use crate::harness::otlp::{log_record, logs_request, now_nanos};
use crate::harness::process::start_with_tokens;

/// Slow connections opened: more than the plane's open-files limit below.
const ATTACKERS: usize = 1_100;
/// The plane's soft and hard open-files limit in this test.
const OPEN_FILES: u64 = 1_024;

/// Raises this test process's own open-files limit so that it can hold the attackers' sockets.
fn raise_own_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test]
async fn slow_clients_cannot_make_the_plane_unreachable() -> Result<()> {
    raise_own_limit();
    let tmp = tempfile::tempdir()?;
    let (mut plane, [ingest, viewer]) = start_with_tokens(
        &tmp.path().join("data"),
        &["--header-read-timeout-ms", "2000"],
        &[],
        ["ingest", "viewer"],
    )
    .await?;
    plane.open_files = Some(OPEN_FILES);
    plane.restart().await?;
    let addr = plane.endpoints.http.clone();

    let mut attackers = Vec::with_capacity(ATTACKERS);
    for _ in 0..ATTACKERS {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            continue;
        };
        // A request line and a header, and never the blank line that ends the headers.
        let _ = stream
            .write_all(b"POST /v1/logs HTTP/1.1\r\nHost: gantry\r\nContent-Type: application/x-protobuf\r\n")
            .await;
        attackers.push(stream);
    }
    ensure!(
        attackers.len() > OPEN_FILES as usize,
        "only {} attackers connected",
        attackers.len()
    );

    // Health and ingest answer while the attackers hold their connections open.
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = prost::Message::encode_to_vec(&logs_request(
        "slow-clients",
        vec![log_record("still reachable", now_nanos(), vec![])],
    ));
    let mut healthy = false;
    let mut ingested = false;
    while !(healthy && ingested) {
        ensure!(
            Instant::now() < deadline,
            "the plane stayed unreachable under {ATTACKERS} slow clients (health {healthy}, ingest {ingested})\n{}",
            plane.stderr_tail(30)
        );
        if !healthy {
            healthy = matches!(
                plane.client.get(plane.url(Port::Http, "/healthz")).send().await,
                Ok(response) if response.status() == 200
            );
        }
        if !ingested {
            ingested = matches!(
                plane
                    .post_otlp(Port::OtlpHttp, "/v1/logs", CT_PROTOBUF, body.clone(), &ingest, &[])
                    .await,
                Ok(response) if response.status() == 200
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every slow client was closed by the plane (past the cap at once, the others at the header-read timeout).
    let mut still_open = 0;
    let mut buf = [0u8; 512];
    for stream in &mut attackers {
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            // A 408 or 400 answer before the close is fine; the next read sees the close.
            Ok(Ok(_)) => {
                if !matches!(
                    tokio::time::timeout(left, stream.read(&mut buf)).await,
                    Ok(Ok(0) | Err(_)) | Err(_)
                ) {
                    still_open += 1;
                }
            }
            Err(_) => still_open += 1,
        }
    }
    ensure!(
        still_open == 0,
        "{still_open} slow clients were never closed by the plane"
    );

    // And the plane is whole: it still answers, and the record ingested under attack is stored.
    plane
        .wait_for_logs(&viewer, "service:slow-clients", 1)
        .await
        .context("the record sent under attack")?;
    Ok(())
}
