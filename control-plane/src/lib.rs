//! The Gantry control plane as a library: configuration, the state database (tokens, nodes), who may call what,
//! the OTLP intake over the telemetry store, the node registry, the HTTP API and the server that ties them together.
//! The `gantry` binary is a thin CLI over this crate.
//!
//! Module dependencies point one way: `server` → `api` → (`ingest`, `nodes`, `auth`, `rollout`) → `state`;
//! `telemetry` and `config` are leaves. **The store knows nothing about HTTP** (it is the `gantry-store` crate); **only
//! `gantry-proto` and OTLP types cross the network**.

pub mod api;
pub mod auth;
pub mod config;
pub mod dashboards;
pub mod ingest;
pub mod instances;
pub mod nodes;
pub mod placement;
pub mod rollout;
pub mod scheduler;
pub mod server;
pub mod spec;
pub mod state;
pub mod telemetry;
pub mod ui;
