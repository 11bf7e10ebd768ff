//! The plane's configuration: [`RawConfig`] as written (TOML file, `GANTRY_*` variables, flags) and the validated
//! [`PlaneConfig`] it runs with.
//!
//! Layering (`gantry_support::config::layered`): the file, then environment variables, then flags; clap reads the
//! last two with each field's own type, and an unknown key in the file is an error that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_store::StoreConfig;
use gantry_store::budget::QueryLimits;
pub use gantry_support::config::ConfigError;
use serde::{Deserialize, Serialize};

/// Largest `max_body_bytes`: a batch is one WAL record, and `gantry_wal::MAX_PAYLOAD` (64 MiB) must hold it.
const MAX_BODY_BYTES: usize = 48 << 20;

/// The configuration as written: every field optional; unknown keys in the file are rejected. Each field is also a
/// flag (`--retention-hours`) and a variable (`GANTRY_RETENTION_HOURS`).
#[derive(Debug, Default, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where all state lives: write-ahead log, indexes, state.db [default: ./gantry-data].
    #[arg(long, env = "GANTRY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP API, dashboard and OTLP/HTTP address, host:port; port 0 picks one [default: 0.0.0.0:8700].
    #[arg(long, env = "GANTRY_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// OTLP/gRPC address [default: 0.0.0.0:4317].
    #[arg(long, env = "GANTRY_OTLP_GRPC_ADDR", value_name = "ADDR")]
    pub otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP address, the standard port [default: 0.0.0.0:4318].
    #[arg(long, env = "GANTRY_OTLP_HTTP_ADDR", value_name = "ADDR")]
    pub otlp_http_addr: Option<String>,
    /// Hours of telemetry kept; older records are rejected at ingest [default: 168].
    #[arg(long, env = "GANTRY_RETENTION_HOURS", value_name = "HOURS")]
    pub retention_hours: Option<u64>,
    /// Disk budget of the indexes, bytes; the oldest partitions go first (0: none) [default: 0].
    #[arg(long, env = "GANTRY_MAX_DISK_BYTES", value_name = "BYTES")]
    pub max_disk_bytes: Option<u64>,
    /// Width of a time partition, hours [default: 24].
    #[arg(long, env = "GANTRY_PARTITION_HOURS", value_name = "HOURS")]
    pub partition_hours: Option<u64>,
    /// Batches waiting for the write-ahead log before ingest answers 429 [default: 64].
    #[arg(long, env = "GANTRY_MAX_QUEUE_BATCHES", value_name = "N")]
    pub max_queue_batches: Option<usize>,
    /// Largest OTLP body, bytes, before and after decompression [default: 20971520].
    #[arg(long, env = "GANTRY_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How often new data is committed and made searchable, ms [default: 500].
    #[arg(long, env = "GANTRY_COMMIT_INTERVAL_MS", value_name = "MS")]
    pub commit_interval_ms: Option<u64>,
    /// Indexing memory per signal, MiB (at least 16) [default: 64].
    #[arg(long, env = "GANTRY_INDEXER_MEMORY_MB", value_name = "MIB")]
    pub indexer_memory_mb: Option<usize>,
    /// Heartbeats a node may miss in a row before it is down (1-100) [default: 3].
    #[arg(
        long,
        env = "GANTRY_NODE_DOWN_AFTER_MISSED_HEARTBEATS",
        value_name = "N"
    )]
    pub node_down_after_missed_heartbeats: Option<u32>,
    /// Connections open at once over all listeners; further ones are closed at once. Also capped to the open-files
    /// limit less 256 [default: 4096].
    #[arg(long, env = "GANTRY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long a node may be down before its instances are placed on other nodes, ms [default: 60000].
    #[arg(long, env = "GANTRY_NODE_GRACE_PERIOD_MS", value_name = "MS")]
    pub node_grace_period_ms: Option<u64>,
    /// Nodes one token (other than an admin token) may register [default: 10000].
    #[arg(long, env = "GANTRY_MAX_NODES_PER_TOKEN", value_name = "N")]
    pub max_nodes_per_token: Option<usize>,
    /// Time an HTTP/1.1 client has to send a request's line and headers, ms [default: 10000].
    #[arg(long, env = "GANTRY_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// A connection with nothing read or written for this long is closed, ms [default: 300000].
    #[arg(long, env = "GANTRY_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Longest a query may run (waiting for a permit included) before it ends with a 422, ms [default: 30000].
    #[arg(long, env = "GANTRY_QUERY_TIMEOUT_MS", value_name = "MS")]
    pub query_timeout_ms: Option<u64>,
    /// Most index terms a query may examine expanding attribute ranges and body prefixes, over all its clauses and
    /// partitions, before it ends with a 422 [default: 10000000].
    #[arg(long, env = "GANTRY_QUERY_MAX_EXPANDED_TERMS", value_name = "N")]
    pub query_max_expanded_terms: Option<u64>,
    /// Expensive queries (running over 100 ms) that run at once; more wait for one to finish [default: half the
    /// cores, at least 1].
    #[arg(long, env = "GANTRY_QUERY_MAX_EXPENSIVE", value_name = "N")]
    pub query_max_expensive: Option<usize>,
    /// A directory of dashboard YAML files shown under /dashboards/NAME; an invalid file stops the plane with its
    /// file, line and field [default: the built-in dashboards].
    #[arg(long, env = "GANTRY_DASHBOARDS", value_name = "DIR")]
    pub dashboards: Option<PathBuf>,
}

/// The validated configuration the plane runs with.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// Where all state lives: WAL, indexes, tokens.
    pub data_dir: PathBuf,
    /// HTTP API and OTLP/HTTP.
    pub http_addr: SocketAddr,
    /// OTLP/gRPC.
    pub otlp_grpc_addr: SocketAddr,
    /// OTLP/HTTP on its standard port.
    pub otlp_http_addr: SocketAddr,
    /// The embedded store's settings.
    pub store: StoreConfig,
    /// Largest OTLP body accepted, after decompression.
    pub max_body_bytes: usize,
    /// Heartbeats a node may miss in a row before it is down.
    pub node_down_after_missed_heartbeats: u32,
    /// Connections open at once over all listeners.
    pub max_connections: usize,
    /// Nodes one non-admin token may register.
    pub max_nodes_per_token: usize,
    /// How long a node may be down before its instances are placed elsewhere.
    pub node_grace_period: Duration,
    /// Time an HTTP/1.1 client has to send a request's line and headers.
    pub header_read_timeout: Duration,
    /// A connection with nothing read or written for this long is closed.
    pub idle_timeout: Duration,
    /// The dashboards shown under `/dashboards/NAME`, checked.
    pub dashboards: Vec<crate::dashboards::Dashboard>,
}

impl RawConfig {
    /// The file at `file` (when given) with what `flags` (flags and `GANTRY_*` variables, read by clap) set on top.
    ///
    /// # Errors
    /// The file cannot be read, or names an unknown key or a value of the wrong type.
    pub fn layered(file: Option<&Path>, flags: &RawConfig) -> Result<RawConfig, ConfigError> {
        gantry_support::config::layered(file, flags)
    }

    /// Parses TOML text; `origin` names it in errors.
    ///
    /// # Errors
    /// Malformed TOML, an unknown key or a value of the wrong type.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        gantry_support::config::from_toml(text, origin)
    }

    /// Checks every value and fills in defaults.
    pub fn validate(self) -> Result<PlaneConfig, ConfigError> {
        let defaults = StoreConfig::default_embedded();
        let positive = |key: &'static str, value: u64| {
            if value == 0 {
                Err(ConfigError::Value {
                    key,
                    message: "must be greater than 0".to_owned(),
                })
            } else {
                Ok(value)
            }
        };
        let store = StoreConfig {
            retention: match self.retention_hours {
                Some(hours) => Duration::from_secs(positive("retention_hours", hours)? * 3600),
                None => defaults.retention,
            },
            max_disk_bytes: self.max_disk_bytes.unwrap_or(defaults.max_disk_bytes),
            partition: match self.partition_hours {
                Some(hours) => Duration::from_secs(positive("partition_hours", hours)? * 3600),
                None => defaults.partition,
            },
            max_queue_batches: positive(
                "max_queue_batches",
                self.max_queue_batches.unwrap_or(defaults.max_queue_batches) as u64,
            )? as usize,
            commit_interval: Duration::from_millis(positive(
                "commit_interval_ms",
                self.commit_interval_ms
                    .unwrap_or(defaults.commit_interval.as_millis() as u64),
            )?),
            indexer_memory_bytes: match self.indexer_memory_mb {
                Some(mb) if mb < 16 => {
                    return Err(ConfigError::Value {
                        key: "indexer_memory_mb",
                        message: "must be at least 16".to_owned(),
                    });
                }
                Some(mb) => mb << 20,
                None => defaults.indexer_memory_bytes,
            },
            query: QueryLimits {
                timeout: Duration::from_millis(
                    match self
                        .query_timeout_ms
                        .unwrap_or(defaults.query.timeout.as_millis() as u64)
                    {
                        ms @ 10..=3_600_000 => ms,
                        _ => {
                            return Err(ConfigError::value(
                                "query_timeout_ms",
                                "must be between 10 and 3600000 (an hour)",
                            ));
                        }
                    },
                ),
                max_expanded_terms: positive(
                    "query_max_expanded_terms",
                    self.query_max_expanded_terms
                        .unwrap_or(defaults.query.max_expanded_terms),
                )?,
                max_expensive: match self
                    .query_max_expensive
                    .unwrap_or(defaults.query.max_expensive)
                {
                    n @ 1..=1024 => n,
                    _ => {
                        return Err(ConfigError::value(
                            "query_max_expensive",
                            "must be between 1 and 1024",
                        ));
                    }
                },
                ..defaults.query
            },
        };
        Ok(PlaneConfig {
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from("gantry-data")),
            http_addr: parse_addr("http_addr", self.http_addr, "0.0.0.0:8700")?,
            otlp_grpc_addr: parse_addr("otlp_grpc_addr", self.otlp_grpc_addr, "0.0.0.0:4317")?,
            otlp_http_addr: parse_addr("otlp_http_addr", self.otlp_http_addr, "0.0.0.0:4318")?,
            max_body_bytes: match self.max_body_bytes.unwrap_or(20 << 20) {
                bytes @ 1..=MAX_BODY_BYTES => bytes,
                _ => {
                    return Err(ConfigError::Value {
                        key: "max_body_bytes",
                        message: format!(
                            "must be between 1 and {MAX_BODY_BYTES} (the write-ahead log's record limit, with room)"
                        ),
                    });
                }
            },
            node_down_after_missed_heartbeats: match self
                .node_down_after_missed_heartbeats
                .unwrap_or(3)
            {
                missed @ 1..=100 => missed,
                _ => {
                    return Err(ConfigError::Value {
                        key: "node_down_after_missed_heartbeats",
                        message: "must be between 1 and 100".to_owned(),
                    });
                }
            },
            max_connections: match self.max_connections.unwrap_or(4096) {
                n @ 16..=1_000_000 => n,
                _ => {
                    return Err(ConfigError::value(
                        "max_connections",
                        "must be between 16 and 1000000",
                    ));
                }
            },
            max_nodes_per_token: match self
                .max_nodes_per_token
                .unwrap_or(crate::nodes::DEFAULT_MAX_NODES_PER_TOKEN)
            {
                n @ 1..=crate::nodes::MAX_NODES => n,
                _ => {
                    return Err(ConfigError::value(
                        "max_nodes_per_token",
                        format!("must be between 1 and {}", crate::nodes::MAX_NODES),
                    ));
                }
            },
            node_grace_period: Duration::from_millis(
                match self.node_grace_period_ms.unwrap_or(60_000) {
                    ms @ 1_000..=86_400_000 => ms,
                    _ => {
                        return Err(ConfigError::value(
                            "node_grace_period_ms",
                            "must be between 1000 and 86400000 (a day)",
                        ));
                    }
                },
            ),
            header_read_timeout: Duration::from_millis(
                match self.header_read_timeout_ms.unwrap_or(10_000) {
                    ms @ 100..=600_000 => ms,
                    _ => {
                        return Err(ConfigError::value(
                            "header_read_timeout_ms",
                            "must be between 100 and 600000 (10 minutes)",
                        ));
                    }
                },
            ),
            idle_timeout: Duration::from_millis(match self.idle_timeout_ms.unwrap_or(300_000) {
                ms @ 1_000..=86_400_000 => ms,
                _ => {
                    return Err(ConfigError::value(
                        "idle_timeout_ms",
                        "must be between 1000 and 86400000 (a day)",
                    ));
                }
            }),
            dashboards: match &self.dashboards {
                Some(dir) => crate::dashboards::load_dir(dir)
                    .map_err(|error| ConfigError::value("dashboards", format!("{error:#}")))?,
                None => crate::dashboards::built_in()
                    .map_err(|error| ConfigError::value("dashboards", error.to_string()))?,
            },
            store,
        })
    }
}

impl PlaneConfig {
    /// The limits of the plane's listeners (one connection cap shared by the three).
    pub fn listener_limits(&self) -> gantry_net::Limits {
        gantry_net::Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            ..gantry_net::Limits::new(self.max_connections)
        }
    }
}

fn parse_addr(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let text = value.as_deref().unwrap_or(default);
    text.parse().map_err(|_| ConfigError::Value {
        key,
        message: format!("`{text}` is not a host:port address such as 127.0.0.1:8700"),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The flags of `gantry plane`, as the binary declares them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        raw: RawConfig,
    }

    fn flags(args: &[&str]) -> Result<RawConfig, clap::Error> {
        Flags::try_parse_from(std::iter::once("gantry").chain(args.iter().copied())).map(|f| f.raw)
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plane.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn unknown_key_is_named() {
        let (_dir, path) = file("retention_hours = 1\nretention_dayz = 3\n");
        let error = RawConfig::layered(Some(&path), &RawConfig::default()).unwrap_err();
        assert!(error.to_string().contains("retention_dayz"), "{error}");
    }

    #[test]
    fn flags_beat_the_file() {
        let (_dir, path) = file(
            "http_addr = \"127.0.0.1:1\"\notlp_http_addr = \"127.0.0.1:2\"\nretention_hours = 5\n",
        );
        let top = flags(&["--http-addr", "127.0.0.1:5"]).unwrap();
        let config = RawConfig::layered(Some(&path), &top)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(config.http_addr.port(), 5);
        assert_eq!(config.otlp_http_addr.port(), 2);
        assert_eq!(config.store.retention, Duration::from_secs(5 * 3600));
        assert_eq!(config.node_down_after_missed_heartbeats, 3, "the default");
    }

    #[test]
    fn flag_values_are_typed_by_the_field() {
        let error = flags(&["--max-queue-batches", "lots"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--max-queue-batches"), "{error}");
        assert!(flags(&["--node-down-after-missed-heartbeats", "-3"]).is_err());
        assert_eq!(
            flags(&["--retention-hours", "48"]).unwrap().retention_hours,
            Some(48)
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let check = |toml: &str, key: &str| {
            let (_dir, path) = file(toml);
            let error = RawConfig::layered(Some(&path), &RawConfig::default())
                .and_then(RawConfig::validate)
                .unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
        };
        check("http_addr = \"nope\"", "http_addr");
        check("retention_hours = 0", "retention_hours");
        check("max_queue_batches = 0", "max_queue_batches");
        check("max_body_bytes = 100000000", "max_body_bytes");
        check("retention_hours = \"x\"", "retention_hours");
        check(
            "node_down_after_missed_heartbeats = 0",
            "node_down_after_missed_heartbeats",
        );
        check(
            "node_down_after_missed_heartbeats = 101",
            "node_down_after_missed_heartbeats",
        );
        check(
            "node_down_after_missed_heartbeats = -1",
            "node_down_after_missed_heartbeats",
        );
    }
}
