//! Dashboards as code: YAML files, each a grid of panels with a title and a default time range, loaded at start from
//! `--dashboards DIR` (every `*.yaml` and `*.yml` file in it; the file's stem is the dashboard's name and URL,
//! `/dashboards/NAME`) or, by default, the built-in ones of the repository's `dashboards/` directory, compiled in.
//! An invalid file stops the plane with its file, line, column and field.
//!
//! ```yaml
//! title: Payments
//! range: -6h                  # the default range: relative (-15m, -24h) or RFC 3339
//! panels:
//!   - {title: Payments RED, type: red, service: payments}
//!   - {title: Error logs, type: log_count, query: "service:payments AND severity:>=error"}
//!   - {title: p95 request duration, type: metric, metric: http.server.request.duration, agg: p95,
//!      group_by: [service.version], filter: "service.name:payments", width: 2}
//!   - {title: Newest errors, type: logs, query: "severity:>=error", limit: 20, width: 2}
//! ```
//!
//! Panel types: `metric` (a metric's series, aggregated per step: `agg` one of avg, sum, min, max, rate, p50, p90,
//! p95, p99; `group_by`; `filter` in the query language), `log_count` (matches of a log query over time), `red`
//! (a service's RED: rate, error ratio and p99 per version; without `service`, every service's rate), `logs` (the
//! newest matching log lines, `limit` at most 100). `width` is 1 (half the grid) or 2 (all of it).

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::spec::SpecError;

/// The largest dashboard file read.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// The aggregations a metric panel may use (as `GET /api/v1/metrics` names them).
pub const AGGREGATIONS: [&str; 9] = [
    "avg", "sum", "min", "max", "rate", "p50", "p90", "p95", "p99",
];

/// The built-in dashboards: (file name, YAML).
pub const BUILT_IN: [(&str, &str); 4] = [
    (
        "platform-overview.yaml",
        include_str!("../../dashboards/platform-overview.yaml"),
    ),
    ("node.yaml", include_str!("../../dashboards/node.yaml")),
    (
        "service-red.yaml",
        include_str!("../../dashboards/service-red.yaml"),
    ),
    (
        "plane-health.yaml",
        include_str!("../../dashboards/plane-health.yaml"),
    ),
];

/// A dashboard, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    /// Its name: the file's stem, and its URL (`/dashboards/NAME`).
    pub name: String,
    /// Its title.
    pub title: String,
    /// The default range's start (`-1h` unless the file says).
    pub range: String,
    /// Its panels, in grid order.
    pub panels: Vec<Panel>,
}

/// One panel of a dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Its title.
    pub title: String,
    /// What it shows.
    pub kind: PanelKind,
    /// 1: half the grid's width; 2: all of it.
    pub width: u8,
}

/// What a panel shows.
#[derive(Debug, Clone, PartialEq)]
pub enum PanelKind {
    /// A metric's series.
    Metric {
        /// The metric's name.
        metric: String,
        /// The aggregation, as the API names it.
        agg: String,
        /// Label keys to group by.
        group_by: Vec<String>,
        /// A filter in the query language (empty: all).
        filter: String,
    },
    /// Matches of a log query over time.
    LogCount {
        /// The query.
        query: String,
    },
    /// RED of a service per version, or every service's rate.
    Red {
        /// The service, or every service.
        service: Option<String>,
    },
    /// The newest matching log lines.
    Logs {
        /// The query.
        query: String,
        /// Lines shown, at most 100.
        limit: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    title: String,
    #[serde(default)]
    range: Option<Spanned<String>>,
    panels: Vec<Spanned<RawPanel>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPanel {
    title: String,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    agg: Option<Spanned<String>>,
    #[serde(default)]
    group_by: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<Spanned<String>>,
    #[serde(default)]
    query: Option<Spanned<String>>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    limit: Option<Spanned<usize>>,
    #[serde(default)]
    width: Option<Spanned<u8>>,
}

/// Reads one dashboard file: `file` names it in errors, its stem names the dashboard.
///
/// # Errors
/// The first problem, with file, line, column and field.
pub fn parse(file: &str, text: &str) -> Result<Dashboard, SpecError> {
    let error = |at: Option<serde_saphyr::Location>, field: String, message: String| SpecError {
        location: gantry_proto::SpecLocation {
            file: file.to_owned(),
            line: at.map_or(0, |at| at.line()),
            column: at.map_or(0, |at| at.column()),
            field,
        },
        message,
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(error(
            None,
            String::new(),
            format!(
                "the file is {} bytes, more than the {MAX_FILE_BYTES} allowed",
                text.len()
            ),
        ));
    }
    let name = Path::new(file)
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default()
        .to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(error(
            None,
            String::new(),
            "a dashboard's file name is its URL: letters, digits, `-` and `_`, then .yaml"
                .to_owned(),
        ));
    }
    let raw: RawDashboard = crate::spec::read_yaml(file, text)?;
    let range = match raw.range {
        Some(range) => {
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
            if crate::api::time::parse_time("range", &range.value, now).is_err() {
                return Err(error(
                    Some(range.referenced),
                    "range".into(),
                    format!(
                        "`{}` is not a time: use a relative time (-15m, -6h, -7d) or RFC 3339",
                        range.value
                    ),
                ));
            }
            range.value
        }
        None => "-1h".to_owned(),
    };
    if raw.panels.is_empty() {
        return Err(error(
            None,
            "panels".into(),
            "a dashboard needs at least one panel".into(),
        ));
    }
    let mut panels = Vec::with_capacity(raw.panels.len());
    for (index, panel) in raw.panels.into_iter().enumerate() {
        let at = panel.referenced;
        let panel = panel.value;
        let field = |name: &str| format!("panels[{index}].{name}");
        let query = |spanned: Option<Spanned<String>>, name: &str, required: bool| match spanned {
            Some(text) => match gantry_query::parse(&text.value) {
                Ok(_) => Ok(text.value),
                Err(parse) => Err(error(
                    Some(text.referenced),
                    field(name),
                    format!("`{}` does not parse: {parse}", text.value),
                )),
            },
            None if required => Err(error(
                Some(at),
                field(name),
                format!("a `{}` panel needs `{name}`", panel.kind.value),
            )),
            None => Ok(String::new()),
        };
        let kind = match panel.kind.value.as_str() {
            "metric" => {
                let metric = panel
                    .metric
                    .clone()
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        error(
                            Some(at),
                            field("metric"),
                            "a `metric` panel needs `metric`".into(),
                        )
                    })?;
                let agg = match &panel.agg {
                    Some(agg) if !AGGREGATIONS.contains(&agg.value.as_str()) => {
                        return Err(error(
                            Some(agg.referenced),
                            field("agg"),
                            format!(
                                "`{}` is not an aggregation: use one of {}",
                                agg.value,
                                AGGREGATIONS.join(", ")
                            ),
                        ));
                    }
                    Some(agg) => agg.value.clone(),
                    None => "avg".to_owned(),
                };
                PanelKind::Metric {
                    metric,
                    agg,
                    group_by: panel.group_by.clone().unwrap_or_default(),
                    filter: query(panel.filter, "filter", false)?,
                }
            }
            "log_count" => PanelKind::LogCount {
                query: query(panel.query, "query", true)?,
            },
            "red" => PanelKind::Red {
                service: panel.service.clone().filter(|s| !s.is_empty()),
            },
            "logs" => {
                let limit = match &panel.limit {
                    Some(limit) if !(1..=100).contains(&limit.value) => {
                        return Err(error(
                            Some(limit.referenced),
                            field("limit"),
                            format!("{} lines: a logs panel shows 1 to 100", limit.value),
                        ));
                    }
                    Some(limit) => limit.value,
                    None => 20,
                };
                PanelKind::Logs {
                    query: query(panel.query, "query", true)?,
                    limit,
                }
            }
            other => {
                return Err(error(
                    Some(panel.kind.referenced),
                    field("type"),
                    format!("`{other}` is not a panel type: use metric, log_count, red or logs"),
                ));
            }
        };
        let width = match panel.width {
            Some(width) if !(1..=2).contains(&width.value) => {
                return Err(error(
                    Some(width.referenced),
                    field("width"),
                    format!(
                        "width {}: a panel is 1 (half the grid) or 2 (all of it) wide",
                        width.value
                    ),
                ));
            }
            Some(width) => width.value,
            None => 1,
        };
        panels.push(Panel {
            title: panel.title,
            kind,
            width,
        });
    }
    Ok(Dashboard {
        name,
        title: raw.title,
        range,
        panels,
    })
}

/// The built-in dashboards.
///
/// # Errors
/// Never for the files shipped (a test reads them all); an error names the file.
pub fn built_in() -> Result<Vec<Dashboard>, SpecError> {
    BUILT_IN
        .iter()
        .map(|(file, text)| parse(file, text))
        .collect()
}

/// Every dashboard file (`*.yaml`, `*.yml`) of `dir`, by name.
///
/// # Errors
/// The directory cannot be read, a file cannot be read, or the first invalid file (file, line, column, field); two
/// files of one name.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Dashboard>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the dashboards directory {}: {e}",
                dir.display()
            )
        })?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut dashboards: Vec<Dashboard> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let file = path.display().to_string();
        let dashboard = parse(&file, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if dashboards.iter().any(|d| d.name == dashboard.name) {
            anyhow::bail!(
                "{file}: a dashboard named `{}` is already loaded",
                dashboard.name
            );
        }
        dashboards.push(dashboard);
    }
    Ok(dashboards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_dashboards_are_valid() {
        let all = built_in().unwrap();
        let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["platform-overview", "node", "service-red", "plane-health"]
        );
        assert!(all.iter().all(|d| !d.panels.is_empty()));
    }

    #[test]
    fn invalid_files_are_refused_with_file_line_and_field() {
        let check = |text: &str, line: u64, field: &str, words: &str| {
            let error = parse("boards/ops.yaml", text).unwrap_err();
            assert_eq!(error.location.file, "boards/ops.yaml", "{error}");
            assert_eq!(error.location.line, line, "{error}");
            assert_eq!(error.location.field, field, "{error}");
            assert!(error.message.contains(words), "{error}");
        };
        check(
            "title: Ops\npanels:\n  - {title: a, type: chart}\n",
            3,
            "panels[0].type",
            "not a panel type",
        );
        check(
            "title: Ops\npanels:\n  - title: a\n    type: log_count\n    query: \"service:(x\"\n",
            5,
            "panels[0].query",
            "does not parse",
        );
        check(
            "title: Ops\npanels:\n  - {title: a, type: metric, metric: m, agg: median}\n",
            3,
            "panels[0].agg",
            "not an aggregation",
        );
        check(
            "title: Ops\nrange: yesterday\npanels:\n  - {title: a, type: red}\n",
            2,
            "range",
            "not a time",
        );
        check(
            "title: Ops\npanels:\n  - {title: a, type: red, colour: blue}\n",
            3,
            "panels[0].colour",
            "unknown field",
        );
        check(
            "title: Ops\npanels:\n  - {title: a, type: logs}\n",
            3,
            "panels[0].query",
            "needs `query`",
        );
        assert!(
            parse(
                "bad name!.yaml",
                "title: x\npanels: [{title: a, type: red}]"
            )
            .is_err()
        );
    }
}
