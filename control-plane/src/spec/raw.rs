//! The platform spec as written: the YAML's shape, read by serde-saphyr with `deny_unknown_fields` everywhere, and
//! the few scalar forms a user writes (durations like `5s`, memory like `64Mi`, CPU like `250m`, counts or
//! percentages like `25%`). Fields that later checks point at are `Spanned`, so that an error names their line.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    /// Services by name, in file order.
    pub services: Spanned<Entries<RawService>>,
}

/// A mapping read in file order, each value with its location. Keys are plain strings, so that an error's field
/// path names them (serde_path_to_error sees only string keys); a key's own location is found from its value's.
#[derive(Debug)]
pub struct Entries<V>(pub Vec<(String, Spanned<V>)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to services")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// One service as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub version: Option<String>,
    pub runtime: Spanned<RawRuntime>,
    pub replicas: Option<Spanned<u32>>,
    #[serde(default)]
    pub resources: RawResources,
    pub port: Option<Spanned<u16>>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    pub health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    pub kill_timeout: Option<Millis>,
    #[serde(default)]
    pub rollout: Option<Spanned<RawRollout>>,
    pub routing: Option<Spanned<RawRouting>>,
}

/// `routing:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub sticky: Option<Spanned<RawSticky>>,
}

/// `routing.sticky`: one of `header` or `cookie`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub header: Option<String>,
    pub cookie: Option<String>,
}

/// `runtime:`, one key of `process` (and, later, `docker` or `kubernetes`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub process: Option<RawProcess>,
    /// Recognised so that the error can say it is not available yet.
    pub docker: Option<Spanned<IgnoredAny>>,
    /// Recognised so that the error can say it is not available yet.
    pub kubernetes: Option<Spanned<IgnoredAny>>,
}

/// `runtime.process`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcess {
    pub command: Spanned<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Entries<String>,
    pub working_dir: Option<String>,
}

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

/// `resources:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
}

/// `health:`, one of `http`, `tcp`, `command`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub http: Option<RawHttpProbe>,
    pub tcp: Option<bool>,
    pub command: Option<Vec<String>>,
    pub interval: Option<Spanned<Millis>>,
    pub timeout: Option<Spanned<Millis>>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub start_period: Option<Millis>,
}

/// `health.http`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpProbe {
    pub path: Spanned<String>,
}

/// `rollout:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub strategy: Option<RawStrategy>,
    pub max_surge: Option<Spanned<CountOrPercent>>,
    pub max_unavailable: Option<Spanned<CountOrPercent>>,
    pub min_healthy_time: Option<Millis>,
    pub progress_deadline: Option<Spanned<Millis>>,
    #[serde(default)]
    pub steps: Vec<Spanned<RawStep>>,
    pub scale_down_delay: Option<Millis>,
    pub preview: Option<Spanned<RawPreview>>,
    #[serde(default)]
    pub judge: RawJudge,
}

/// `rollout.preview` (blue-green).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreview {
    /// Percent of safe requests mirrored, e.g. `100%` or `50`.
    pub mirror: Option<Spanned<Percent>>,
    pub min_requests: Option<u64>,
    pub min_duration: Option<Millis>,
    /// A duration, or `until-promoted`.
    pub pause: Option<PauseValue>,
}

/// `rollout.strategy`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawStrategy {
    Rolling,
    Canary,
    #[serde(alias = "blue_green")]
    BlueGreen,
}

/// One of `rollout.steps`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Percent, e.g. `5` or `"5%"` or `0.5`.
    pub weight: Spanned<Percent>,
    pub min_requests: Option<u64>,
    pub min_duration: Option<Millis>,
    /// A duration, or `until-promoted`.
    pub pause: Option<PauseValue>,
}

/// `rollout.judge`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJudge {
    pub max_error_ratio_increase: Option<Spanned<f64>>,
    pub max_latency_increase: Option<Spanned<Percent>>,
    pub log_errors: Option<Spanned<bool>>,
}

/// A duration written with a unit (`500ms`, `5s`, `1m30s`, `2h`), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(Millis).map_err(de::Error::custom)
    }
}

/// Parses `5s`, `500ms`, `1m30s` (humantime's syntax) into milliseconds; a bare number is refused, since its unit
/// would be a guess.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration `{text}` has no unit: write e.g. `{text}s` or `{text}ms`"
        ));
    }
    humantime::parse_duration(text)
        .map(|duration| duration.as_millis().min(u128::from(u64::MAX)) as u64)
        .map_err(|error| {
            format!("invalid duration `{text}`: {error} (write e.g. `500ms`, `5s`, `1m30s`)")
        })
}

/// Memory: a number of bytes, or a number with a Kubernetes quantity suffix (`Ki`, `Mi`, `Gi`, `Ti` powers of
/// 1024; `k`, `M`, `G`, `T` powers of 1000), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory(pub u64);

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = ScalarText::deserialize(deserializer)?.0;
        parse_memory(&text).map(Memory).map_err(de::Error::custom)
    }
}

/// Parses a memory quantity (see [`Memory`]).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let text = text.trim();
    let (number, factor) = UNITS
        .iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((text, 1));
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            format!("invalid memory `{text}`: write e.g. `64Mi`, `1Gi` or a number of bytes")
        })?;
    Ok((value * factor as f64).round() as u64)
}

/// CPU: cores as a number (`0.5`, `2`) or millicores (`250m`), in millicores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu(pub u32);

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = ScalarText::deserialize(deserializer)?.0;
        parse_cpu(&text).map(Cpu).map_err(de::Error::custom)
    }
}

/// Parses a CPU quantity (see [`Cpu`]).
pub fn parse_cpu(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let invalid =
        || format!("invalid cpu `{text}`: write cores (`0.5`, `2`) or millicores (`250m`)");
    let millis = match text.strip_suffix('m') {
        Some(millis) => millis.trim().parse::<f64>().map_err(|_| invalid())?,
        None => text.parse::<f64>().map_err(|_| invalid())? * 1000.0,
    };
    if !millis.is_finite() || !(0.0..=1_000_000.0).contains(&millis) {
        return Err(invalid());
    }
    Ok(millis.round() as u32)
}

/// A count (`2`) or a percentage (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CountOrPercent {
    Count(u32),
    Percent(f64),
}

impl<'de> Deserialize<'de> for CountOrPercent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = ScalarText::deserialize(deserializer)?.0;
        let text = text.trim();
        let invalid = || {
            de::Error::custom(format!(
                "invalid value `{text}`: write a count (`1`) or a percentage (`25%`)"
            ))
        };
        match text.strip_suffix('%') {
            Some(percent) => {
                let percent: f64 = percent.trim().parse().map_err(|_| invalid())?;
                if !(0.0..=100.0).contains(&percent) {
                    return Err(de::Error::custom(format!(
                        "percentage `{text}` is outside 0% to 100%"
                    )));
                }
                Ok(CountOrPercent::Percent(percent))
            }
            None => text
                .parse()
                .map(CountOrPercent::Count)
                .map_err(|_| invalid()),
        }
    }
}

/// A percentage written `5`, `0.5` or `"5%"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = ScalarText::deserialize(deserializer)?.0;
        let number = text.trim().trim_end_matches('%').trim();
        number
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(Percent)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "invalid percentage `{text}`: write e.g. `5` or `5%`"
                ))
            })
    }
}

/// A step's pause: a duration, or `until-promoted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseValue {
    For(u64),
    UntilPromoted,
}

impl<'de> Deserialize<'de> for PauseValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.trim() {
            "until-promoted" | "until_promoted" => Ok(PauseValue::UntilPromoted),
            other => parse_duration(other)
                .map(PauseValue::For)
                .map_err(|error| de::Error::custom(format!("{error}, or `until-promoted`"))),
        }
    }
}

/// A scalar read as text whether YAML typed it as a number or a string (`0.5` and `"500m"` alike).
struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_memory("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory("512M"), Ok(512_000_000));
        assert_eq!(parse_memory("1000"), Ok(1000));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("-1Mi").is_err());
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert!(parse_cpu("two").is_err());
        assert_eq!(parse_duration("5s"), Ok(5000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").is_err());
    }
}
