//! Runs the plane: binds the three listeners, writes `endpoints.json`, opens the state database and the store,
//! serves HTTP (axum) and OTLP/gRPC (tonic) until the shutdown token is cancelled, then drains (listeners stop
//! accepting, requests in flight finish, the node registry is written, the store writes what it acknowledged and
//! commits) and returns.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use gantry_proto::Endpoints;
use gantry_store::Store;
use gantry_store::embedded::EmbeddedStore;
use gantry_support::{CancellationToken, TaskTracker};
use tokio::net::TcpListener;

use crate::api::{AppState, otlp_app};
use crate::config::PlaneConfig;
use crate::nodes::NodeRegistry;
use crate::state::StateDb;
use crate::ui::app;

/// A plane whose listeners are bound.
pub struct Bound {
    /// Where it listens.
    pub endpoints: Endpoints,
    http: TcpListener,
    otlp_http: TcpListener,
    otlp_grpc: TcpListener,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}: is another process using it? pick another with the flag"))
}

/// Binds the listeners (port 0 picks a free port), creates the data directory (mode 0700) and writes
/// `DATA_DIR/endpoints.json`.
///
/// # Errors
/// An address is taken or the data directory cannot be written.
pub async fn bind_all(config: &PlaneConfig) -> anyhow::Result<Bound> {
    gantry_support::fs::create_private_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let http = bind(config.http_addr, "the HTTP API (--http-addr)").await?;
    let otlp_grpc = bind(config.otlp_grpc_addr, "OTLP/gRPC (--otlp-grpc-addr)").await?;
    let otlp_http = bind(config.otlp_http_addr, "OTLP/HTTP (--otlp-http-addr)").await?;
    let endpoints = Endpoints {
        http: http.local_addr()?.to_string(),
        otlp_grpc: otlp_grpc.local_addr()?.to_string(),
        otlp_http: otlp_http.local_addr()?.to_string(),
    };
    gantry_support::fs::write_atomic(
        &config.data_dir.join("endpoints.json"),
        &serde_json::to_vec_pretty(&endpoints)?,
    )
    .context("cannot write endpoints.json")?;
    Ok(Bound {
        endpoints,
        http,
        otlp_http,
        otlp_grpc,
    })
}

/// Serves until `shutdown` is cancelled (or the store fails to start, which cancels it), then drains.
///
/// # Errors
/// The state database or the store could not open, or a server failed.
pub async fn serve(
    config: PlaneConfig,
    bound: Bound,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state_dir = config.data_dir.clone();
    let db = Arc::new(
        tokio::task::spawn_blocking(move || StateDb::open(&state_dir))
            .await?
            .context("cannot open the state database")?,
    );
    let nodes = {
        let (db, missed, per_token) = (
            db.clone(),
            config.node_down_after_missed_heartbeats,
            config.max_nodes_per_token,
        );
        Arc::new(
            tokio::task::spawn_blocking(move || NodeRegistry::open_with(db, missed, per_token))
                .await??,
        )
    };
    let (store, replayed) = EmbeddedStore::start(&config.data_dir, config.store.clone());
    let store: Arc<dyn Store> = store;
    let state = AppState::new(store.clone(), db, nodes.clone(), config.max_body_bytes)
        .with_runtime(config.node_grace_period, shutdown.clone())
        .with_dashboards(config.dashboards.clone());
    let otlp = state.otlp.clone();
    tracing::info!(
        http = %bound.endpoints.http,
        otlp_grpc = %bound.endpoints.otlp_grpc,
        otlp_http = %bound.endpoints.otlp_http,
        data_dir = %config.data_dir.display(),
        "gantry plane listening"
    );

    let failure = Arc::new(std::sync::Mutex::new(None::<anyhow::Error>));
    let tasks = TaskTracker::new();
    {
        let (shutdown, failure) = (shutdown.clone(), failure.clone());
        tasks.spawn(async move {
            let error = tokio::select! {
                () = shutdown.cancelled() => return,
                replayed = replayed => match replayed {
                    Ok(Ok(_)) => {
                        tracing::info!("gantry plane ready");
                        return;
                    }
                    Ok(Err(error)) => anyhow::anyhow!("the store could not start: {error}"),
                    Err(_) => anyhow::anyhow!("the store's opener died during start (a panic during replay)"),
                },
            };
            tracing::error!(error = %error, "stopping");
            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
            shutdown.cancel();
        });
    }
    tasks.spawn(nodes.clone().watch(shutdown.clone().cancelled_owned()));
    tasks.spawn(state.scheduler.clone().run(shutdown.clone()));
    tasks.spawn(state.rollouts.clone().run(shutdown.clone()));
    tasks.spawn(crate::telemetry::record_own(
        store.clone(),
        shutdown.clone(),
    ));
    let limits = config.listener_limits();
    tracing::info!(
        max_connections = limits.connections.max(),
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "listener limits"
    );
    let http = gantry_net::serve(
        bound.http,
        app(state.clone()),
        limits.clone(),
        shutdown.clone(),
        "HTTP API",
    );
    let otlp_http = gantry_net::serve(
        bound.otlp_http,
        otlp_app(&state),
        limits.clone(),
        shutdown.clone(),
        "OTLP/HTTP",
    );
    let grpc = otlp.serve_grpc(bound.otlp_grpc, limits, shutdown.clone());
    let (http, otlp_http, grpc) = tokio::join!(http, otlp_http, grpc);
    // A server that failed on its own stops the rest.
    shutdown.cancel();
    tracing::info!("listeners closed; writing what was acknowledged");
    tasks.close();
    tasks.wait().await;
    // Last, so that the database holds the last heartbeat of every node.
    let saved = tokio::task::spawn_blocking(move || nodes.save()).await;
    if let Ok(Err(error)) = saved {
        tracing::error!(error = %error, "node registry not saved at shutdown");
    }
    store.shutdown().await;
    http.context("the HTTP API server failed")?;
    otlp_http.context("the OTLP/HTTP server failed")?;
    grpc?;
    tracing::info!("gantry plane stopped");
    match failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
