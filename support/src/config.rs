//! Configuration layering shared by the plane and the agent: a TOML file at the bottom, then environment variables
//! and command-line flags on top.
//!
//! Each binary has one raw configuration struct that derives `serde::Deserialize` (with `deny_unknown_fields`, for
//! the file), `serde::Serialize` and `clap::Args`, every field an `Option` whose clap argument names both its flag
//! and its variable (`#[arg(long, env = "GANTRY_RETENTION_HOURS")]`). Clap reads flags and variables with the
//! field's own type (flags beat variables); [`layered`] puts what they set over the file; the binary then validates
//! the result once. No value's type is guessed from its key's name.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

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
    /// The TOML is malformed, names an unknown key or has a value of the wrong type.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// The file, or what else the text came from.
        origin: String,
        /// The parser's message (it names the key, the line and the column).
        message: String,
    },
    /// A value is out of range, malformed or missing.
    #[error("invalid value for `{key}`: {message}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl ConfigError {
    /// A [`ConfigError::Value`] for `key`.
    pub fn value(key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            key,
            message: message.into(),
        }
    }
}

/// Parses TOML `text` into `R`; `origin` (a path, usually) names it in errors.
///
/// # Errors
/// [`ConfigError::Parse`] with the parser's message, which names the key, line and column.
pub fn from_toml<R: DeserializeOwned>(text: &str, origin: &str) -> Result<R, ConfigError> {
    toml::from_str(text).map_err(|error| ConfigError::Parse {
        origin: origin.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    })
}

/// Reads a TOML file into `R`.
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Parse`] when it is not a valid `R`.
pub fn from_file<R: DeserializeOwned>(path: &Path) -> Result<R, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_toml(&text, &path.display().to_string())
}

/// The configuration in `file` (when given) with every key that `top` sets put over it. `top` is what clap read from
/// flags and environment variables: the keys it leaves `None` keep the file's value. Tables merge key by key (a
/// flag's label joins the file's `[labels]`); any other value replaces the file's.
///
/// # Errors
/// The file cannot be read or is not a valid `R` ([`ConfigError::Read`], [`ConfigError::Parse`]).
pub fn layered<R: Serialize + DeserializeOwned>(
    file: Option<&Path>,
    top: &R,
) -> Result<R, ConfigError> {
    let mut base = match file {
        Some(path) => {
            // Parsed as `R` first, so that an unknown key or a wrong type is reported against the file.
            let raw: R = from_file(path)?;
            to_table(&raw, &path.display().to_string())?
        }
        None => toml::Table::new(),
    };
    overlay(&mut base, to_table(top, "flags and environment variables")?);
    toml::Value::Table(base)
        .try_into()
        .map_err(|error: toml::de::Error| ConfigError::Parse {
            origin: "after layering flags and environment over the file".to_owned(),
            message: error.message().to_owned(),
        })
}

fn to_table<R: Serialize>(raw: &R, origin: &str) -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(raw).map_err(|error| ConfigError::Parse {
        origin: origin.to_owned(),
        message: error.to_string(),
    })
}

/// Puts every key of `top` over `base`, merging tables key by key.
fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => overlay(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[serde(skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hours: Option<u64>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn top_beats_file_and_tables_merge() {
        let (_dir, path) = file("addr = \"a\"\nhours = 5\n[labels]\nzone = \"eu\"\n");
        let top = Raw {
            addr: Some("b".into()),
            labels: BTreeMap::from([("rack".into(), "7".into())]),
            ..Raw::default()
        };
        let merged: Raw = layered(Some(&path), &top).unwrap();
        assert_eq!(merged.addr.as_deref(), Some("b"));
        assert_eq!(merged.hours, Some(5), "unset on top: the file's value");
        assert_eq!(merged.labels.len(), 2);
        let alone: Raw = layered(None, &top).unwrap();
        assert_eq!(alone.hours, None);
    }

    #[test]
    fn file_errors_name_the_file_and_key() {
        let (_dir, path) = file("hours = 5\nhourz = 3\n");
        let error = layered(Some(&path), &Raw::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("hourz") && error.contains("config.toml"),
            "{error}"
        );
        let (_dir, path) = file("hours = \"x\"\n");
        let error = layered(Some(&path), &Raw::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("hours"), "{error}");
        let missing = layered::<Raw>(Some(Path::new("/nonexistent/c.toml")), &Raw::default());
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }
}
