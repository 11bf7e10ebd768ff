//! Runs the plane: binds the three listeners, writes `endpoints.json`, serves until a shutdown signal, then drains
//! (servers stop accepting, the store writes what it acknowledged and commits) and returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use gantry_proto::Endpoints;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{AppState, app, otlp_app};
use crate::auth::TokenStore;
use crate::config::PlaneConfig;
use crate::ingest::Ingest;
use crate::ingest::grpc::OtlpGrpc;
use crate::nodes::NodeRegistry;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::telemetry::SelfMetrics;

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

/// Binds the listeners (port 0 picks a free port) and writes `DATA_DIR/endpoints.json`.
pub async fn bind_all(config: &PlaneConfig) -> anyhow::Result<Bound> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
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
    let path = config.data_dir.join("endpoints.json");
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(&endpoints)?)?;
    std::fs::rename(&temporary, &path)?;
    Ok(Bound {
        endpoints,
        http,
        otlp_http,
        otlp_grpc,
    })
}

/// Serves until `shutdown` completes, then drains.
pub async fn serve(
    config: PlaneConfig,
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tokens = Arc::new(TokenStore::open(&config.data_dir)?);
    let nodes = Arc::new(NodeRegistry::open(
        &config.data_dir,
        config.node_down_after_missed_heartbeats,
    )?);
    let (store, replayed) = EmbeddedStore::start(&config.data_dir, config.store.clone());
    let store: Arc<dyn Store> = store;
    let ingest = Ingest {
        store: store.clone(),
        retention: config.store.retention,
        max_body_bytes: config.max_body_bytes,
        metrics: Arc::new(SelfMetrics::default()),
        admission: Arc::new(tokio::sync::Semaphore::new(crate::ingest::MAX_IN_FLIGHT)),
    };
    let state = AppState {
        ingest: ingest.clone(),
        tokens: tokens.clone(),
        nodes: nodes.clone(),
    };
    tracing::info!(
        http = %bound.endpoints.http,
        otlp_grpc = %bound.endpoints.otlp_grpc,
        otlp_http = %bound.endpoints.otlp_http,
        data_dir = %config.data_dir.display(),
        "gantry plane listening"
    );

    let (stop, stopped) = watch::channel(false);
    let failure = Arc::new(std::sync::Mutex::new(None::<anyhow::Error>));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
    }
    {
        let stop = stop.clone();
        let failure = failure.clone();
        tokio::spawn(async move {
            match replayed.await {
                Ok(Ok(_)) => tracing::info!("gantry plane ready"),
                Ok(Err(error)) => {
                    tracing::error!(error = %error, "the store could not start; stopping");
                    *failure.lock().expect("failure lock poisoned") =
                        Some(anyhow::anyhow!("the store could not start: {error}"));
                    let _ = stop.send(true);
                }
                Err(_) => {
                    tracing::error!("the store's opener died (a panic during replay); stopping");
                    *failure.lock().expect("failure lock poisoned") =
                        Some(anyhow::anyhow!("the store's opener died during start"));
                    let _ = stop.send(true);
                }
            }
        });
    }
    let until = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let watcher = tokio::spawn(nodes.clone().watch(until(stopped.clone())));
    let http =
        axum::serve(bound.http, app(state.clone())).with_graceful_shutdown(until(stopped.clone()));
    let otlp_http = axum::serve(bound.otlp_http, otlp_app(state))
        .with_graceful_shutdown(until(stopped.clone()));
    let grpc = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            crate::ingest::grpc::standard_codes,
        ))
        .add_routes(OtlpGrpc::new(ingest, tokens).router())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(bound.otlp_grpc),
            until(stopped.clone()),
        );
    let (http, otlp_http, grpc) =
        tokio::join!(async { http.await }, async { otlp_http.await }, grpc);
    http.context("the HTTP API server failed")?;
    otlp_http.context("the OTLP/HTTP server failed")?;
    grpc.context("the OTLP/gRPC server failed")?;
    tracing::info!("listeners closed; writing what was acknowledged");
    let _ = watcher.await;
    // Last, so that the file holds the last heartbeat of every node.
    let saved = tokio::task::spawn_blocking(move || nodes.save()).await;
    if let Ok(Err(error)) = saved {
        tracing::error!(error = %error, "node registry not saved at shutdown");
    }
    store.shutdown().await;
    tracing::info!("gantry plane stopped");
    match failure.lock().expect("failure lock poisoned").take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn termination() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; draining"),
    }
}
