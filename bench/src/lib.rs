//! Gantry's benchmarks and the realistic telemetry generator they (and the demo) send.
//!
//! - [`ingest`]: `gantry bench ingest`, OTLP/HTTP ingest to searchable against the raw tantivy rate of the same
//!   documents in the same run;
//! - [`queries`]: `gantry bench queries`, a cheap query's and an ingest batch's latency while expensive queries run,
//!   with the expensive-query gate and without it, in the same run;
//! - [`router`]: `gantry bench router`, a node's service router against a direct connection to the same instance;
//! - [`generate`]: seeded generators of logs and traces shaped like a platform's (services, routes, errors).

pub mod dashboard;
pub mod generate;
pub mod ingest;
pub mod node;
pub mod queries;
pub mod rollout;
pub mod router;

pub use dashboard::{DashboardBench, run_dashboard};
pub use ingest::{IngestBench, run_ingest};
pub use queries::{QueryBench, run_queries};
pub use rollout::{RolloutBench, run_judge, run_rollout};
pub use router::{RouterBench, run_router};
