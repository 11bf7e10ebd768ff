//! Gantry's end-to-end tests, one binary: each test starts the real `gantry` plane (and `gantry-agent`) in its
//! own temp dir and talks to it with real clients (reqwest, tonic, the OpenTelemetry Python SDK, Docker).
//!
//! One module per area; [`harness`] is what they share. Run one area with `cargo test -p gantry-tests --test e2e
//! protocol::`, one test with its name.

mod agent;
mod auth;
mod config;
mod derived;
mod disk_full;
mod exact;
mod harness;
mod kill;
mod metrics;
mod nodes;
mod overload;
mod placement;
mod platform;
mod protocol;
mod query;
mod query_cost;
mod sdk;
mod slow_clients;
mod state;
