//! Gantry's node agent: sources read telemetry on the machine, a disk buffer holds it, a shipper delivers it to the
//! plane, at least once.
//!
//! ```text
//!  sources (files, Docker, host metrics,  ──AppendRequest──► buffer writer (thread) ──► Wal (DATA_DIR/buffer)
//!   local OTLP receiver)                      bounded         append + fsync, then        │ watch(last seq)
//!      ▲ checkpoints      ◄────────── seq ───────────────────  answer with the seq         ▼
//!                                                         shipper (task) ──► POST {plane}/v1/{signal}
//!  heartbeat (task) ──► POST {plane}/api/v1/nodes/heartbeat    cursor: DATA_DIR/shipped-seq
//! ```
//!
//! Every component runs under a `gantry_support::supervisor::Supervisor`: one cancellation token and task tracker
//! per shutdown stage, and a component that fails is logged and restarted with backoff. On SIGTERM the stages stop
//! in order: **sources first** (what they read reaches the buffer), then the buffer writer drains, then the shipper
//! gets `shutdown_timeout` to deliver, and the agent's own HTTP endpoint stops last.
//!
//! **The agent never depends on the control plane crate** (nor on the store or tantivy): only `gantry-proto`,
//! `gantry-otlp`, `gantry-support`, `gantry-wal` and OTLP types.

pub mod buffer;
pub mod config;
pub mod http;
pub mod node;
pub mod receiver;
pub mod router;
pub mod runtime;
pub mod shipper;
pub mod sources;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use gantry_support::CancellationToken;
use gantry_support::fs::write_atomic;
use gantry_support::supervisor::Supervisor;
use tokio::net::TcpListener;

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
/// Connections open at once over the agent's listeners (its HTTP endpoint and local OTLP receivers).
pub const MAX_CONNECTIONS: usize = 1024;

/// A listener bound before its component starts (so its address is known at once), and the address a restarted
/// component binds again.
struct Bound {
    first: Mutex<Option<TcpListener>>,
    addr: SocketAddr,
}

impl Bound {
    async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<Arc<Bound>> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {what} to {addr}"))?;
        Self::from(listener)
    }

    fn from(listener: TcpListener) -> anyhow::Result<Arc<Bound>> {
        Ok(Arc::new(Bound {
            addr: listener.local_addr()?,
            first: Mutex::new(Some(listener)),
        }))
    }

    /// The listener bound at start, or a new one on the same address (a restart).
    async fn take(&self) -> anyhow::Result<TcpListener> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        match first {
            Some(listener) => Ok(listener),
            None => TcpListener::bind(self.addr)
                .await
                .with_context(|| format!("binding {} again", self.addr)),
        }
    }
}

/// Runs the agent until `shutdown` is cancelled, then stops the sources, lets what they read reach the buffer,
/// gives the shipper `shutdown_timeout` to deliver, and returns.
///
/// # Errors
/// The data directory, the disk buffer or a listener could not be set up.
pub async fn run(mut config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    if config.run_instances {
        // Instances' stdout and stderr, tagged with their service, version and instance id.
        config.files.push(config::FileSourceConfig {
            pattern: format!("{}/instances/*/*.log*", data_dir.display()),
            service: None,
            multiline: config::Multiline::Default,
            parse_regex: None,
            instance_output: true,
        });
    }
    gantry_support::fs::create_private_dir(&data_dir)
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

    // Listeners are bound before anything runs, so that their addresses (port 0 picks one) are known and written.
    let http = Bound::bind(config.http_addr, "agent's http address").await?;
    let otlp_grpc = match config.otlp_grpc_addr {
        Some(addr) => Some(Bound::from(
            receiver::bind(addr, "OTLP/gRPC", "--otlp-grpc-addr").await?,
        )?),
        None => None,
    };
    let otlp_http = match config.otlp_http_addr {
        Some(addr) => Some(Bound::from(
            receiver::bind(addr, "OTLP/HTTP", "--otlp-http-addr").await?,
        )?),
        None => None,
    };
    let endpoints = serde_json::json!({
        "http": http.addr.to_string(),
        "otlp_grpc": otlp_grpc.as_ref().map(|b| b.addr.to_string()),
        "otlp_http": otlp_http.as_ref().map(|b| b.addr.to_string()),
    });
    write_endpoints(&data_dir, &endpoints)?;
    tracing::info!(
        http = %http.addr,
        otlp_grpc = ?otlp_grpc.as_ref().map(|b| b.addr),
        otlp_http = ?otlp_http.as_ref().map(|b| b.addr),
        "serving /metrics and /healthz, and the local OTLP receiver"
    );

    // File positions are recovered from the buffer before the shipper may remove records.
    let recovered = {
        let (config, buffer, appends, telemetry) = (
            config.clone(),
            buffer.clone(),
            appends.clone(),
            telemetry.clone(),
        );
        tokio::task::spawn_blocking(move || {
            FileSource::recover(&config, buffer, appends, telemetry)
        })
        .await??
    };

    let restarts = telemetry.restarts.clone();
    let sources = Supervisor::new("sources", restarts.clone());
    let docker_reachable = Arc::new(AtomicBool::new(false));
    if config.host_metrics {
        let (sink, resource, interval, telemetry) = (
            sink.clone(),
            host_resource.clone(),
            config.metrics_interval,
            telemetry.clone(),
        );
        sources.spawn("host_metrics", move |stop| {
            let run = sources::host::run(
                sink.clone(),
                resource.clone(),
                interval,
                telemetry.clone(),
                stop,
            );
            async move {
                run.await;
                Ok(())
            }
        });
    }
    if config.docker {
        let docker = DockerConfig {
            data_dir: data_dir.clone(),
            metrics_interval: config.metrics_interval,
            host_resource: host_resource.clone(),
            batch_max_lines: config.batch_max_lines,
            batch_timeout: config.batch_timeout,
        };
        let (sink, telemetry, reachable) =
            (sink.clone(), telemetry.clone(), docker_reachable.clone());
        sources.spawn("docker", move |stop| {
            let run = sources::docker::run(
                docker.clone(),
                sink.clone(),
                telemetry.clone(),
                reachable.clone(),
                stop,
            );
            async move {
                run.await;
                Ok(())
            }
        });
    }
    // One connection cap for the agent's listeners (they are local, but a misbehaving app must not take the
    // agent down).
    let limits = gantry_net::Limits::new(MAX_CONNECTIONS);
    let otlp = receiver::receiver(sink.clone(), telemetry.clone(), host_resource.clone());
    if let Some(bound) = otlp_http {
        let (otlp, limits) = (otlp.clone(), limits.clone());
        sources.spawn("otlp_http", move |stop| {
            let (otlp, bound, limits) = (otlp.clone(), bound.clone(), limits.clone());
            async move {
                let listener = bound.take().await?;
                gantry_net::serve(listener, otlp.http_router(), limits, stop, "OTLP/HTTP").await
            }
        });
    }
    if let Some(bound) = otlp_grpc {
        let (otlp, limits) = (otlp.clone(), limits.clone());
        sources.spawn("otlp_grpc", move |stop| {
            let (otlp, bound, limits) = (otlp.clone(), bound.clone(), limits.clone());
            async move { otlp.serve_grpc(bound.take().await?, limits, stop).await }
        });
    }
    drop(otlp);
    {
        let recovered = Mutex::new(Some(recovered));
        let (config, buffer, appends, telemetry) = (
            config.clone(),
            buffer.clone(),
            appends.clone(),
            telemetry.clone(),
        );
        sources.spawn("files", move |stop| {
            let first = recovered.lock().unwrap_or_else(|p| p.into_inner()).take();
            let (config, buffer, appends, telemetry) = (
                config.clone(),
                buffer.clone(),
                appends.clone(),
                telemetry.clone(),
            );
            async move {
                let source = match first {
                    Some(source) => source,
                    // A restart: positions are recovered again (pinned records keep what the crash left).
                    None => {
                        tokio::task::spawn_blocking(move || {
                            FileSource::recover(&config, buffer, appends, telemetry)
                        })
                        .await??
                    }
                };
                let thread = source.spawn(stop)?;
                tokio::task::spawn_blocking(move || thread.join())
                    .await?
                    .map_err(|_| anyhow::anyhow!("the file source thread panicked"))?
            }
        });
    }
    let client = shipper::http_client()?;
    {
        let mut facts = node::facts(&agent_id, config.labels.clone());
        if config.run_instances {
            facts.runtimes.push("process".to_owned());
        }
        let heartbeat = node::Heartbeat {
            plane: config.plane.clone(),
            token: config.token.clone(),
            interval: config.heartbeat_interval,
            facts,
            docker_reachable: docker_reachable.clone(),
        };
        let (client, telemetry) = (client.clone(), telemetry.clone());
        sources.spawn("heartbeat", move |stop| {
            let run = node::run(heartbeat.clone(), client.clone(), telemetry.clone(), stop);
            async move {
                run.await;
                Ok(())
            }
        });
    }
    let instances = Supervisor::new("instances", restarts.clone());
    if config.run_instances {
        let runtime_config = runtime::RuntimeConfig {
            plane: config.plane.clone(),
            token: config.token.clone(),
            agent_id: agent_id.clone(),
            dir: data_dir.join("instances"),
            host: config.service_addr,
            otlp_http: config
                .otlp_http_addr
                .and_then(|_| endpoints_otlp_http(&endpoints)),
            report_interval: config
                .heartbeat_interval
                .max(std::time::Duration::from_secs(1)),
        };
        let manager = runtime::Manager::open(runtime_config.clone(), client.clone())?;
        let (sender, receiver) = tokio::sync::watch::channel(None);
        {
            let (runtime_config, client, sender) =
                (runtime_config.clone(), client.clone(), sender.clone());
            instances.spawn("assignments", move |stop| {
                let run = runtime::poll_assignments(
                    runtime_config.clone(),
                    client.clone(),
                    sender.clone(),
                    stop,
                );
                async move {
                    run.await;
                    Ok(())
                }
            });
        }
        {
            let spans = router::SpanSink::start(sink.clone(), sources::host_name());
            let (receiver, limits, host) = (receiver.clone(), limits.clone(), config.service_addr);
            instances.spawn("router", move |stop| {
                let run = router::run(host, receiver.clone(), spans.clone(), limits.clone(), stop);
                async move {
                    run.await;
                    Ok(())
                }
            });
        }
        let manager = Mutex::new(Some(manager));
        let stop_instances = config.stop_instances_on_exit;
        let client = client.clone();
        instances.spawn("instances", move |stop| {
            let first = manager.lock().unwrap_or_else(|p| p.into_inner()).take();
            let (runtime_config, client, receiver) =
                (runtime_config.clone(), client.clone(), receiver.clone());
            async move {
                let manager = match first {
                    Some(manager) => manager,
                    // A restart after a panic: the state file has what the last round saved.
                    None => runtime::Manager::open(runtime_config, client)?,
                };
                manager.run(receiver, stop, stop_instances).await;
                Ok(())
            }
        });
    }
    // The supervised components hold their own clones: once they stop, the writer sees no sender left and ends.
    drop(sink);
    drop(appends);

    let shipping = Supervisor::new("shipper", restarts.clone());
    {
        let (buffer, telemetry) = (buffer.clone(), telemetry.clone());
        let shipper_config = shipper::ShipperConfig {
            plane: config.plane.clone(),
            token: config.token.clone(),
            // Batch ids are `<agent id>-<buffer epoch>-<seq>`.
            agent_id: format!("{agent_id}-{}", buffer.epoch()),
        };
        shipping.spawn("shipper", move |stop| {
            let run = shipper::run(
                buffer.clone(),
                client.clone(),
                shipper_config.clone(),
                telemetry.clone(),
                stop,
            );
            async move {
                run.await;
                Ok(())
            }
        });
    }
    let endpoint = Supervisor::new("http", restarts);
    {
        let app = http::app(http::AppState {
            telemetry: telemetry.clone(),
            agent_id: agent_id.clone().into(),
        });
        endpoint.spawn("http", move |stop| {
            let (app, http, limits) = (app.clone(), http.clone(), limits.clone());
            async move { gantry_net::serve(http.take().await?, app, limits, stop, "agent HTTP").await }
        });
    }

    shutdown.cancelled().await;
    // Instances keep running (unless asked otherwise): only the manager stops.
    instances.stop(None).await;
    tracing::info!("shutting down: flushing sources into the buffer");
    sources.stop(None).await;
    // Every sender went with the sources: the writer ends once it has served the rest.
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the buffer writer thread panicked"))?;
    if shipping.stop(Some(config.shutdown_timeout)).await {
        tracing::info!("everything buffered was delivered");
    } else {
        tracing::warn!(
            shipped = buffer.shipped(),
            timeout_ms = config.shutdown_timeout.as_millis() as u64,
            "shutdown timeout: undelivered batches stay in the disk buffer for the next start"
        );
    }
    endpoint.stop(None).await;
    Ok(())
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

/// The OTLP/HTTP receiver's bound address, from the endpoints written at start.
fn endpoints_otlp_http(endpoints: &serde_json::Value) -> Option<SocketAddr> {
    endpoints["otlp_http"].as_str()?.parse().ok()
}

fn write_endpoints(data_dir: &Path, endpoints: &serde_json::Value) -> anyhow::Result<()> {
    let path = data_dir.join(ENDPOINTS_FILE);
    let body = serde_json::to_vec(endpoints)?;
    write_atomic(&path, &body).with_context(|| format!("writing {}", path.display()))
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
