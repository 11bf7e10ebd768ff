//! A full disk under the plane: the data directory (and the plane's stderr) on a small tmpfs filled to the last
//! byte. Ingest answers a counted 503 with `Retry-After` instead of failing for good or dying; the process stays up
//! and ready; once space is back, ingest works again by itself and nothing acknowledged is lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

use crate::harness::api::{CT_PROTOBUF, Port, wait_until};
use crate::harness::otlp::{log_record, logs_request, now_nanos};
use crate::harness::process::{Plane, start_with_tokens};
use crate::harness::skip_unless_ci;

/// A tmpfs mounted for one test and unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mib: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount -t tmpfs failed ({status}): this test needs root"
        );
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes to `path` until the filesystem has no byte left: 1 MiB chunks, then single pages, then single bytes.
fn fill(path: &Path) -> Result<()> {
    let mut file = std::fs::File::create(path)?;
    for size in [1 << 20, 4096, 1] {
        let chunk = vec![0u8; size];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_data())
            .is_ok()
        {}
    }
    Ok(())
}

async fn send(plane: &Plane, token: &str, body: &str) -> Result<(u16, Option<String>)> {
    let request = prost::Message::encode_to_vec(&logs_request(
        "disk-full",
        vec![log_record(body, now_nanos(), vec![])],
    ));
    let response = plane
        .post_otlp(Port::OtlpHttp, "/v1/logs", CT_PROTOBUF, request, token, &[])
        .await?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((response.status().as_u16(), retry_after))
}

/// A sample of the plane's `/metrics`, by name (no labels).
async fn gauge(plane: &Plane, token: &str, name: &str) -> Result<f64> {
    let text = plane
        .client
        .get(plane.url(Port::Http, "/metrics"))
        .bearer_auth(token)
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        .ok_or_else(|| anyhow!("{name} not in /metrics"))
}

#[tokio::test]
async fn a_full_disk_is_a_counted_503_that_clears_once_space_is_back() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mount = match Tmpfs::mount(&tmp.path().join("disk"), 48) {
        Ok(mount) => mount,
        Err(error) => {
            return skip_unless_ci(
                "a_full_disk_is_a_counted_503_that_clears_once_space_is_back",
                error,
            );
        }
    };
    // The data dir and the plane's stderr (written beside it) are both on the small disk.
    let (plane, [ingest, viewer]) =
        start_with_tokens(&mount.0.join("data"), &[], &[], ["ingest", "viewer"]).await?;
    let (status, _) = send(&plane, &ingest, "before the disk filled").await?;
    ensure!(status == 200, "before: {status}");
    plane.wait_for_logs(&viewer, "service:disk-full", 1).await?;

    let filler = mount.0.join("filler");
    fill(&filler)?;
    for i in 0..3 {
        // Larger than a page, so that it cannot fit in the log's last page left partly free.
        let body = format!("while full {i} {}", "x".repeat(64 << 10));
        let (status, retry_after) = send(&plane, &ingest, &body).await?;
        ensure!(
            status == 503 && retry_after.is_some(),
            "with the disk full ingest must answer 503 with Retry-After, got {status} {retry_after:?}\n{}",
            plane.stderr_tail(20)
        );
    }
    ensure!(
        gauge(&plane, &viewer, "gantry_wal_failing").await? == 1.0,
        "the failure is shown"
    );
    ensure!(
        gauge(&plane, &viewer, "gantry_wal_write_failures").await? >= 3.0,
        "and counted"
    );
    let ready = plane
        .client
        .get(plane.url(Port::Http, "/readyz"))
        .send()
        .await?;
    ensure!(
        ready.status() == 200,
        "the plane stays ready: {}",
        ready.status()
    );

    std::fs::remove_file(&filler)?;
    wait_until(
        Duration::from_secs(30),
        "ingest to work again once space is back",
        || async {
            let (status, _) = send(&plane, &ingest, "after space came back").await?;
            Ok((status == 200).then_some(()))
        },
    )
    .await?;
    ensure!(
        gauge(&plane, &viewer, "gantry_wal_failing").await? == 0.0,
        "the failure clears"
    );
    let hits = plane.wait_for_logs(&viewer, "service:disk-full", 2).await?;
    let bodies: Vec<&str> = hits.iter().filter_map(|h| h["body"].as_str()).collect();
    ensure!(
        bodies.contains(&"before the disk filled") && bodies.contains(&"after space came back"),
        "stored: {bodies:?}"
    );
    drop(plane);
    drop(mount);
    Ok(())
}
