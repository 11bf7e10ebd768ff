//! The Gantry control plane as a library: configuration, tokens, OTLP ingest, the telemetry store, the node registry,
//! the HTTP API and the server that ties them together. The `gantry` binary is a thin CLI over this crate.
//!
//! **The store knows nothing about HTTP**; **only `gantry-proto` and OTLP types cross the network**.

pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod ingest;
pub mod nodes;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::StoreConfig;
