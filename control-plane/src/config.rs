//! The plane's configuration: a raw serde form (TOML file, `GANTRY_*` variables, flags) and its validated form.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Keys that can be set through `GANTRY_<KEY>` environment variables (upper-cased).
const ENV_KEYS: &[&str] = &[
    "data_dir",
    "http_addr",
    "otlp_grpc_addr",
    "otlp_http_addr",
    "retention_hours",
    "max_disk_bytes",
    "partition_hours",
    "max_queue_batches",
    "max_body_bytes",
    "commit_interval_ms",
    "indexer_memory_mb",
    "node_down_after_missed_heartbeats",
];

/// Largest `max_body_bytes`: a batch is one WAL record, and `gantry_wal::MAX_PAYLOAD` (64 MiB) must hold it.
const MAX_BODY_BYTES: usize = 48 << 20;

/// The configuration as written by the user; every field optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<String>,
    otlp_grpc_addr: Option<String>,
    otlp_http_addr: Option<String>,
    retention_hours: Option<u64>,
    max_disk_bytes: Option<u64>,
    partition_hours: Option<u64>,
    max_queue_batches: Option<usize>,
    max_body_bytes: Option<usize>,
    commit_interval_ms: Option<u64>,
    indexer_memory_mb: Option<usize>,
    node_down_after_missed_heartbeats: Option<u32>,
}

/// Command-line overrides, which win over the environment and the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--http-addr`.
    pub http_addr: Option<String>,
    /// `--otlp-grpc-addr`.
    pub otlp_grpc_addr: Option<String>,
    /// `--otlp-http-addr`.
    pub otlp_http_addr: Option<String>,
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
}

/// Settings of the embedded telemetry store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data older than this is rejected at ingest and dropped by retention.
    pub retention: Duration,
    /// Total disk budget for indexes; the oldest partitions go first when exceeded (0: no budget).
    pub max_disk_bytes: u64,
    /// Width of one time partition.
    pub partition: Duration,
    /// Capacity of the write queue, in batches; beyond it ingest answers 429.
    pub max_queue_batches: usize,
    /// How often new data is committed and made searchable.
    pub commit_interval: Duration,
    /// Indexing memory per signal, in bytes.
    pub indexer_memory_bytes: usize,
}

impl StoreConfig {
    /// Defaults suited to one machine; used by tests and benchmarks.
    pub fn default_embedded() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_disk_bytes: 0,
            partition: Duration::from_secs(24 * 3600),
            max_queue_batches: 64,
            commit_interval: Duration::from_millis(500),
            indexer_memory_bytes: 64 << 20,
        }
    }
}

/// A configuration problem, named precisely enough to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or names an unknown key.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// File or environment.
        origin: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid value for `{key}`: {message}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl RawConfig {
    /// Reads a TOML file; unknown keys are an error that names them.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        // The full message quotes the offending line, so a wrong value is named with its key.
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            origin: origin.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })
    }

    /// Applies `GANTRY_<KEY>` variables from `vars` (passed in, not read here) over this configuration.
    pub fn with_env(
        self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("GANTRY_").map(str::to_ascii_lowercase) else {
                continue;
            };
            if !ENV_KEYS.contains(&key.as_str()) {
                continue;
            }
            let value = match value.parse::<i64>() {
                Ok(number) => toml::Value::Integer(number),
                Err(_) => toml::Value::String(value),
            };
            // Checked one by one so that an error names the variable.
            let mut single = toml::Table::new();
            single.insert(key.clone(), value.clone());
            single
                .try_into::<RawConfig>()
                .map_err(|error: toml::de::Error| ConfigError::Parse {
                    origin: format!("from {name}"),
                    message: error.message().to_owned(),
                })?;
            table.insert(key, value);
        }
        let env: RawConfig =
            table
                .try_into()
                .map_err(|error: toml::de::Error| ConfigError::Parse {
                    origin: "from GANTRY_* environment variables".to_owned(),
                    message: error.message().to_owned(),
                })?;
        Ok(self.overlay(env))
    }

    /// Applies command-line flags over this configuration.
    pub fn with_overrides(mut self, flags: Overrides) -> Self {
        self.data_dir = flags.data_dir.or(self.data_dir);
        self.http_addr = flags.http_addr.or(self.http_addr);
        self.otlp_grpc_addr = flags.otlp_grpc_addr.or(self.otlp_grpc_addr);
        self.otlp_http_addr = flags.otlp_http_addr.or(self.otlp_http_addr);
        self
    }

    fn overlay(self, top: RawConfig) -> Self {
        Self {
            data_dir: top.data_dir.or(self.data_dir),
            http_addr: top.http_addr.or(self.http_addr),
            otlp_grpc_addr: top.otlp_grpc_addr.or(self.otlp_grpc_addr),
            otlp_http_addr: top.otlp_http_addr.or(self.otlp_http_addr),
            retention_hours: top.retention_hours.or(self.retention_hours),
            max_disk_bytes: top.max_disk_bytes.or(self.max_disk_bytes),
            partition_hours: top.partition_hours.or(self.partition_hours),
            max_queue_batches: top.max_queue_batches.or(self.max_queue_batches),
            max_body_bytes: top.max_body_bytes.or(self.max_body_bytes),
            commit_interval_ms: top.commit_interval_ms.or(self.commit_interval_ms),
            indexer_memory_mb: top.indexer_memory_mb.or(self.indexer_memory_mb),
            node_down_after_missed_heartbeats: top
                .node_down_after_missed_heartbeats
                .or(self.node_down_after_missed_heartbeats),
        }
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
            store,
        })
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
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let error = RawConfig::from_toml("retention_hours = 1\nretention_dayz = 3\n", "test.toml")
            .unwrap_err();
        assert!(error.to_string().contains("retention_dayz"), "{error}");
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = RawConfig::from_toml(
            "http_addr = \"127.0.0.1:1\"\notlp_http_addr = \"127.0.0.1:2\"\nretention_hours = 5\n",
            "test.toml",
        )
        .unwrap();
        let env = vec![
            ("GANTRY_HTTP_ADDR".to_owned(), "127.0.0.1:3".to_owned()),
            ("GANTRY_OTLP_HTTP_ADDR".to_owned(), "127.0.0.1:4".to_owned()),
            ("GANTRY_BIN".to_owned(), "/not/a/config/key".to_owned()),
        ];
        let flags = Overrides {
            http_addr: Some("127.0.0.1:5".to_owned()),
            ..Overrides::default()
        };
        let config = file
            .with_env(env)
            .unwrap()
            .with_overrides(flags)
            .validate()
            .unwrap();
        assert_eq!(config.http_addr.port(), 5);
        assert_eq!(config.otlp_http_addr.port(), 4);
        assert_eq!(config.store.retention, Duration::from_secs(5 * 3600));
        assert_eq!(config.node_down_after_missed_heartbeats, 3, "the default");
    }

    #[test]
    fn missed_heartbeats_come_from_file_or_env() {
        let file = RawConfig::from_toml("node_down_after_missed_heartbeats = 5", "t").unwrap();
        assert_eq!(
            file.validate().unwrap().node_down_after_missed_heartbeats,
            5
        );
        let env = RawConfig::from_toml("node_down_after_missed_heartbeats = 5", "t")
            .unwrap()
            .with_env([(
                "GANTRY_NODE_DOWN_AFTER_MISSED_HEARTBEATS".to_owned(),
                "100".to_owned(),
            )])
            .unwrap();
        assert_eq!(
            env.validate().unwrap().node_down_after_missed_heartbeats,
            100
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let check = |toml: &str, key: &str| {
            let error = RawConfig::from_toml(toml, "t")
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
        let env = RawConfig::default()
            .with_env([("GANTRY_MAX_QUEUE_BATCHES".to_owned(), "lots".to_owned())]);
        assert!(
            env.unwrap_err()
                .to_string()
                .contains("GANTRY_MAX_QUEUE_BATCHES")
        );
        let env = RawConfig::default().with_env([(
            "GANTRY_NODE_DOWN_AFTER_MISSED_HEARTBEATS".to_owned(),
            "-3".to_owned(),
        )]);
        assert!(
            env.unwrap_err()
                .to_string()
                .contains("GANTRY_NODE_DOWN_AFTER_MISSED_HEARTBEATS")
        );
    }
}
