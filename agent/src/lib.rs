//! Gantry's node agent: sources read telemetry on the machine, a disk buffer holds it, a shipper delivers it to the plane, at least once.
//!
//! ```text
//!  file source (thread) ──AppendRequest──► buffer writer (thread) ──► Wal (DATA_DIR/buffer)
//!      ▲  checkpoints.json      bounded       append + fsync, then         │ watch(last seq)
//!      └──── seq ◄─────────────────────────── answer with the seq          ▼
//!                                                        shipper (task) ──► POST {plane}/v1/logs
//!                                                        cursor: DATA_DIR/shipped-seq
//! ```
//!
//! Sources, buffer and shipper are separate components joined by a bounded channel (sources →
//! buffer) and a watch (buffer → shipper); batches are OTLP `ExportLogsServiceRequest`s from end to
//! end. **The agent never depends on the control plane crate**: only `gantry-proto`, `gantry-wal`
//! and OTLP types.

pub mod buffer;
pub mod config;
pub mod http;
pub mod node;
pub mod receiver;
pub mod shipper;
pub mod sources;
pub mod telemetry;

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::sync::{oneshot, watch};

use buffer::Buffer;
use config::AgentConfig;
use sources::docker::DockerConfig;
use sources::file::FileSource;
use sources::{Sink, kv};
use telemetry::Telemetry;

/// Name of the file holding the agent's id inside the data dir.
pub const AGENT_ID_FILE: &str = "agent-id";
/// Name of the file the agent writes its bound HTTP address to.
pub const ENDPOINTS_FILE: &str = "agent-endpoints.json";

/// Runs the agent until `shutdown` resolves, then stops the sources, lets what they read reach
/// the buffer, gives the shipper `shutdown_timeout` to deliver, and returns.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let agent_id = agent_id(&data_dir)?;
    tracing::info!(agent_id, plane = %config.plane, data_dir = %data_dir.display(), "agent starting");
    let patterns: Vec<String> = config.files.iter().map(|f| f.pattern.clone()).collect();
    let telemetry = Arc::new(Telemetry::new(&patterns));

    let buffer = {
        let (dir, max, telemetry) = (data_dir.clone(), config.buffer_max_bytes, telemetry.clone());
        tokio::task::spawn_blocking(move || Buffer::open(&dir, max, telemetry))
            .await?
            .context("opening the disk buffer")?
    };
    let (appends, writer) = buffer::spawn_writer(buffer.clone())?;
    let sink = Sink::new(appends.clone());
    let host_resource = vec![
        kv("host.name", &sources::host_name()),
        kv("os.type", "linux"),
    ];
    // Sources other than files stop when this turns true; each holds a clone of the sink.
    let (sources_stop, sources_stopped) = watch::channel(false);
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    if config.host_metrics {
        tasks.push(tokio::spawn(sources::host::run(
            sink.clone(),
            host_resource.clone(),
            config.metrics_interval,
            telemetry.clone(),
            sources_stopped.clone(),
        )));
    }
    let docker_reachable = Arc::new(AtomicBool::new(false));
    if config.docker {
        tasks.push(tokio::spawn(sources::docker::run(
            DockerConfig {
                data_dir: data_dir.clone(),
                metrics_interval: config.metrics_interval,
                host_resource: host_resource.clone(),
                batch_max_lines: config.batch_max_lines,
                batch_timeout: config.batch_timeout,
            },
            sink.clone(),
            telemetry.clone(),
            docker_reachable.clone(),
            sources_stopped.clone(),
        )));
    }
    let receiver = receiver::Receiver::start(
        receiver::ReceiverConfig {
            grpc: config.otlp_grpc_addr,
            http: config.otlp_http_addr,
            host_resource: host_resource.clone(),
        },
        sink.clone(),
        telemetry.clone(),
    )
    .await?;
    drop(sink);
    let source = {
        let (config, buffer, telemetry) = (config.clone(), buffer.clone(), telemetry.clone());
        tokio::task::spawn_blocking(move || {
            FileSource::recover(&config, buffer, appends, telemetry)
        })
        .await??
    };

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the agent's http address {}", config.http_addr))?;
    let http_addr = listener.local_addr()?;
    let endpoints = serde_json::json!({
        "http": http_addr.to_string(),
        "otlp_grpc": receiver.grpc_addr.map(|a| a.to_string()),
        "otlp_http": receiver.http_addr.map(|a| a.to_string()),
    });
    write_endpoints(&data_dir, &endpoints)?;
    tracing::info!(
        http = %http_addr,
        otlp_grpc = ?receiver.grpc_addr,
        otlp_http = ?receiver.http_addr,
        "serving /metrics and /healthz, and the local OTLP receiver"
    );
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let app = http::app(http::AppState {
        telemetry: telemetry.clone(),
        agent_id: agent_id.clone().into(),
    });
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });

    let (ship_stop, ship_stopped) = watch::channel(false);
    let client = shipper::http_client()?;
    let heartbeat = tokio::spawn(node::run(
        node::Heartbeat {
            plane: config.plane.clone(),
            token: config.token.clone(),
            interval: config.heartbeat_interval,
            facts: node::facts(&agent_id, config.labels.clone()),
            docker_reachable: docker_reachable.clone(),
        },
        client.clone(),
        telemetry.clone(),
        sources_stopped.clone(),
    ));
    let mut shipper = tokio::spawn(shipper::run(
        buffer.clone(),
        client,
        shipper::ShipperConfig {
            plane: config.plane.clone(),
            token: config.token.clone(),
            // Batch ids are `<agent id>-<buffer epoch>-<seq>`.
            agent_id: format!("{agent_id}-{}", buffer.epoch()),
        },
        telemetry.clone(),
        ship_stopped,
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let source_thread = source.spawn(stop.clone())?;
    let mut source_task = tokio::task::spawn_blocking(move || source_thread.join());
    let early = tokio::select! {
        () = shutdown => None,
        joined = &mut source_task => Some(joined),
    };
    stop.store(true, Ordering::Relaxed);
    let joined = match early {
        Some(joined) => {
            tracing::error!("the file source stopped on its own");
            joined
        }
        None => {
            tracing::info!("shutting down: flushing sources into the buffer");
            source_task.await
        }
    };
    let source_result = match joined? {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("the file source thread panicked")),
    };
    let _ = sources_stop.send(true);
    receiver.stop().await;
    let _ = heartbeat.await;
    for task in tasks {
        if let Err(error) = task.await {
            tracing::error!(error = %error, "a source task failed");
        }
    }
    // The source's sender is gone with its thread, so the writer ends once it served the rest.
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the buffer writer thread panicked"))?;

    let _ = ship_stop.send(true);
    match tokio::time::timeout(config.shutdown_timeout, &mut shipper).await {
        Ok(joined) => {
            joined?;
            tracing::info!("everything buffered was delivered");
        }
        Err(_) => {
            shipper.abort();
            tracing::warn!(
                shipped = buffer.shipped(),
                timeout_ms = config.shutdown_timeout.as_millis() as u64,
                "shutdown timeout: undelivered batches stay in the disk buffer for the next start"
            );
        }
    }
    let _ = http_stop.send(());
    http.await??;
    source_result
}

/// Reads `DATA_DIR/agent-id`, creating it with a random id on first start.
pub fn agent_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(AGENT_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            anyhow::ensure!(
                !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{} holds {id:?}, which is not an agent id; delete it to generate a new one",
                path.display()
            );
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = hex::encode(rand::random::<[u8; 8]>());
            write_atomic(&path, format!("{id}\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_endpoints(data_dir: &Path, endpoints: &serde_json::Value) -> anyhow::Result<()> {
    let path = data_dir.join(ENDPOINTS_FILE);
    let body = serde_json::to_vec(endpoints)?;
    write_atomic(&path, &body).with_context(|| format!("writing {}", path.display()))
}

/// Replaces a small file durably: a temporary file beside it (`NAME.tmp`), fsync, rename, then an fsync of the
/// directory so that the rename itself survives a power loss. Every state file of the agent is written this way.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_is_generated_once() {
        let tmp = tempfile::tempdir().unwrap();
        let first = agent_id(tmp.path()).unwrap();
        assert_eq!(first.len(), 16);
        assert_eq!(agent_id(tmp.path()).unwrap(), first);
        std::fs::write(tmp.path().join(AGENT_ID_FILE), "bad id!").unwrap();
        assert!(agent_id(tmp.path()).is_err());
    }
}
