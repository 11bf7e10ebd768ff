//! `GET /`: every service, worst first, with its health, RED, a sparkline with deploy markers, instances, current
//! version and running rollout; the nodes up and down; the newest deploys.
//!
//! **Health** of a service, from its instances' health checks and its RED against its own recent baseline (the
//! range before its last fifth):
//! - `down`: it should run (replicas above 0, not stopped) and no instance is healthy, or at least half of its
//!   recent requests failed;
//! - `degraded`: fewer healthy instances than desired, or a recent error ratio above both 1% and twice its baseline
//!   (plus one point), or a recent p99 above twice its baseline's, each with at least [`MIN_REQUESTS`] recent
//!   requests;
//! - `stopped` (by `gantry stop`), `idle` (nothing runs and no traffic), else `healthy`.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use gantry_proto::deployments::Deployment;
use gantry_proto::instances::Phase;
use gantry_proto::{NodeStatus, RedSeries};
use gantry_store::RedQuery;
use serde::Deserialize;

use super::chart::{Marker, Sparkline};
use super::format;
use super::{Layout, Range, UiError, Viewer, blocking, html};
use crate::api::AppState;

/// Recent requests needed before RED can call a service degraded.
pub const MIN_REQUESTS: u64 = 20;

/// Buckets of the overview's range (sparkline points).
const BUCKETS: usize = 30;

/// Services per page: the worst come first, so the first page is the one an incident needs; with thousands of
/// services every row on one page would weigh megabytes.
pub const PAGE_SIZE: usize = 100;

/// A service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// See the module's documentation.
    Down,
    /// See the module's documentation.
    Degraded,
    /// See the module's documentation.
    Healthy,
    /// See the module's documentation.
    Idle,
    /// See the module's documentation.
    Stopped,
}

impl Health {
    /// Its name (and CSS class).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Down => "down",
            Health::Degraded => "degraded",
            Health::Healthy => "healthy",
            Health::Idle => "idle",
            Health::Stopped => "stopped",
        }
    }
}

/// One row of the overview.
pub struct Row {
    /// The service.
    pub service: String,
    /// Its health.
    pub health: Health,
    /// Why, in words.
    pub why: String,
    /// Requests per second over the range.
    pub rate: String,
    /// Error ratio over the range.
    pub errors: String,
    /// Whether the error ratio is above 1%.
    pub erroring: bool,
    /// p99 over the range.
    pub p99: String,
    /// Requests per bucket.
    pub sparkline: Sparkline,
    /// Healthy instances of desired, e.g. `3/3`.
    pub instances: String,
    /// The current version.
    pub version: String,
    /// A running rollout: id and words.
    pub rollout: Option<(u64, String)>,
    error_ratio: f64,
}

/// The recent and baseline parts of a series: (requests, errors, worst p99) of each.
fn split(series: &RedSeries) -> ((u64, u64, f64), (u64, u64, f64)) {
    let recent_from = series.points.len() - series.points.len() / 5;
    let mut parts = [(0, 0, 0.0f64); 2];
    for (i, point) in series.points.iter().enumerate() {
        let part = &mut parts[usize::from(i >= recent_from)];
        part.0 += point.requests;
        part.1 += point.errors;
        if point.requests > 0 {
            part.2 = part.2.max(point.p99_ms);
        }
    }
    (parts[1], parts[0])
}

/// The health of a service, and why.
pub fn health(
    series: Option<&RedSeries>,
    desired: Option<(u32, bool)>,
    healthy: u32,
) -> (Health, String) {
    let (recent, baseline) = series.map(split).unwrap_or_default();
    let ratio = |(requests, errors, _): (u64, u64, f64)| errors as f64 / requests.max(1) as f64;
    if let Some((replicas, stopped)) = desired {
        if stopped {
            return (Health::Stopped, "stopped by hand".into());
        }
        if replicas > 0 && healthy == 0 {
            return (Health::Down, format!("no healthy instance of {replicas}"));
        }
    }
    if recent.0 >= MIN_REQUESTS && ratio(recent) >= 0.5 {
        return (
            Health::Down,
            format!(
                "{} of recent requests failed",
                format::percent(ratio(recent))
            ),
        );
    }
    if let Some((replicas, _)) = desired
        && healthy < replicas
    {
        return (
            Health::Degraded,
            format!("{healthy} of {replicas} instances healthy"),
        );
    }
    if recent.0 >= MIN_REQUESTS {
        let (now, before) = (ratio(recent), ratio(baseline));
        if now > 0.01 && now > 2.0 * before + 0.01 {
            return (
                Health::Degraded,
                format!(
                    "errors {} recently, {} before",
                    format::percent(now),
                    format::percent(before)
                ),
            );
        }
        if baseline.0 >= MIN_REQUESTS && baseline.2 > 0.0 && recent.2 > 2.0 * baseline.2 {
            return (
                Health::Degraded,
                format!(
                    "p99 {} recently, {} before",
                    format::millis(recent.2),
                    format::millis(baseline.2)
                ),
            );
        }
    }
    match (desired, series.map_or(0, |s| s.total.requests)) {
        (Some((0, _)) | None, 0) => (Health::Idle, "no instances and no traffic".into()),
        _ => (Health::Healthy, String::new()),
    }
}

/// Deploy markers of deployments, by service.
pub fn markers(deployments: &[Deployment]) -> HashMap<String, Vec<Marker>> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let ms = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_millis())
            .unwrap_or(now_ms)
    };
    let mut by_service: HashMap<String, Vec<Marker>> = HashMap::new();
    // A queued deployment has not touched the service yet; a cancelled one never did.
    for deployment in deployments.iter().filter(|d| {
        !matches!(
            d.status,
            gantry_proto::deployments::Status::Queued
                | gantry_proto::deployments::Status::Cancelled
        )
    }) {
        let outcome = match (deployment.status.active(), deployment.outcome) {
            (true, _) | (false, None) => "running".to_owned(),
            (false, Some(outcome)) => outcome.as_str().to_owned(),
        };
        by_service
            .entry(deployment.service.clone())
            .or_default()
            .push(Marker {
                start_ms: ms(&deployment.started),
                end_ms: deployment.finished.as_deref().map_or(now_ms, ms),
                title: format!(
                    "deploy #{} {} → {}: {}",
                    deployment.id,
                    deployment.from_version,
                    deployment.to_version,
                    outcome.replace('_', " ")
                ),
                outcome,
            });
    }
    by_service
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    range: Range,
    filter: String,
    rows: Vec<Row>,
    total: usize,
    /// Rows matching the filter, over all pages.
    matching: usize,
    /// The first row's position (1-based) and the page's links: previous, next.
    first: usize,
    previous: Option<String>,
    next: Option<String>,
    counts: Vec<(&'static str, usize)>,
    nodes_up: usize,
    nodes_down: usize,
    deploys: Vec<Deployment>,
    took_ms: u128,
}

/// `?filter=&from=&to=&page=` of the overview.
#[derive(Debug, Deserialize)]
pub struct OverviewQuery {
    filter: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// 1-based.
    page: Option<usize>,
}

/// `GET /`.
pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<OverviewQuery>,
) -> Result<Response, UiError> {
    let started = std::time::Instant::now();
    let range = Range::parse(query.from.as_deref(), query.to.as_deref(), "-1h")?;
    let series = state
        .store
        .red(RedQuery {
            range: range.range,
            buckets: BUCKETS,
            service: None,
            by_operation: false,
            by_version: false,
        })
        .await
        .map_err(crate::api::ApiError::from)?;
    let from_ms = range.range.from_ns / 1_000_000;
    let to_ms = range.range.to_ns / 1_000_000;
    let (deployed, slots, deploys, recent) = blocking(&state.platform, move |platform| {
        let deployed = platform.deployed()?;
        let slots = platform
            .db()
            .read(|c| crate::state::placements::load(c, None))?;
        let (deploys, recent) = platform.db().read(|c| {
            let rows =
                crate::state::deployments::list(c, None, from_ms.max(0) as u64, u64::MAX, 500)?;
            let active = crate::state::deployments::active(c)?;
            let mut all: Vec<Deployment> = Vec::new();
            for row in active.iter().chain(rows.iter()) {
                if all.iter().all(|d| d.id != row.id) {
                    all.push(crate::state::deployments::to_api(c, row)?);
                }
            }
            let newest = crate::state::deployments::list(c, None, 0, u64::MAX, 8)?
                .iter()
                .map(|row| crate::state::deployments::to_api(c, row))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((all, newest))
        })?;
        Ok::<_, crate::state::platform::PlatformError>((deployed, slots, deploys, recent))
    })
    .await?;
    let instances = crate::api::platform::instance_statuses(&state, slots);
    let mut healthy: HashMap<String, u32> = HashMap::new();
    for instance in &instances {
        if instance
            .actual
            .as_ref()
            .is_some_and(|actual| actual.phase == Phase::Healthy)
        {
            let service = instance.instance.split('/').next().unwrap_or_default();
            *healthy.entry(service.to_owned()).or_default() += 1;
        }
    }
    let markers = markers(&deploys);
    let by_service: BTreeMap<&str, &RedSeries> = series
        .iter()
        .map(|s| (s.total.service.as_str(), s))
        .collect();
    let desired: BTreeMap<&str, &gantry_proto::platform::DeployedService> =
        deployed.iter().map(|d| (d.service.as_str(), d)).collect();
    let mut names: Vec<&str> = by_service.keys().chain(desired.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let total = names.len();
    let filter = query.filter.unwrap_or_default();
    let needle = filter.trim().to_lowercase();
    let mut counts: BTreeMap<Health, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    for name in names {
        let series = by_service.get(name).copied();
        let deployed = desired.get(name).copied();
        let healthy = healthy.get(name).copied().unwrap_or(0);
        let (health, why) = health(series, deployed.map(|d| (d.replicas, d.stopped)), healthy);
        *counts.entry(health).or_default() += 1;
        if !needle.is_empty() && !name.to_lowercase().contains(&needle) {
            continue;
        }
        let seconds = (series.map_or(0, |s| s.step_ms).max(1)) as f64 / 1000.0;
        let values: Vec<f64> = series.map_or_else(Vec::new, |s| {
            s.points
                .iter()
                .map(|p| p.requests as f64 / seconds)
                .collect()
        });
        let total_row = series.map(|s| &s.total);
        let rollout = deploys
            .iter()
            .find(|d| d.service == name && d.status.active())
            .map(|d| {
                (
                    d.id,
                    format!(
                        "{} → {} · {} · {}%",
                        d.from_version,
                        d.to_version,
                        d.status.as_str().replace('_', " "),
                        format::number(d.weight)
                    ),
                )
            });
        let error_ratio = total_row.map_or(0.0, |t| t.error_ratio);
        rows.push(Row {
            service: name.to_owned(),
            health,
            why,
            rate: total_row.map_or("-".into(), |t| {
                format!("{}/s", format::number(t.request_rate))
            }),
            errors: total_row.map_or("-".into(), |t| format::percent(t.error_ratio)),
            erroring: error_ratio > 0.01,
            p99: total_row
                .filter(|t| t.requests > 0)
                .map_or("-".into(), |t| format::millis(t.p99_ms)),
            sparkline: Sparkline::new(
                &values,
                format!("{name}: requests per second"),
                from_ms,
                to_ms,
                markers.get(name).map_or(&[][..], Vec::as_slice),
            ),
            instances: deployed.map_or("-".into(), |d| format!("{healthy}/{}", d.replicas)),
            version: deployed.map_or_else(
                || total_row.map(|t| t.version.clone()).unwrap_or_default(),
                |d| d.version.clone(),
            ),
            rollout,
            error_ratio,
        });
    }
    rows.sort_by(|a, b| {
        a.health
            .cmp(&b.health)
            .then(b.error_ratio.total_cmp(&a.error_ratio))
            .then(a.service.cmp(&b.service))
    });
    let matching = rows.len();
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let first = (page - 1) * PAGE_SIZE;
    let rows: Vec<Row> = rows.into_iter().skip(first).take(PAGE_SIZE).collect();
    let link = |page: usize| {
        serde_urlencoded::to_string([
            ("filter", filter.as_str()),
            ("from", range.from.as_str()),
            ("to", range.to.as_str()),
            ("page", page.to_string().as_str()),
        ])
        .unwrap_or_default()
    };
    let previous = (page > 1).then(|| link(page - 1));
    let next = (page < pages).then(|| link(page + 1));
    let nodes = state.nodes.list();
    let nodes_up = nodes
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Up)
        .count();
    let page = OverviewPage {
        layout: viewer.layout("overview", "Overview".into()),
        nodes_down: nodes.nodes.len() - nodes_up,
        nodes_up,
        range,
        filter,
        rows,
        total,
        matching,
        first: first + 1,
        previous,
        next,
        counts: counts.into_iter().map(|(h, n)| (h.as_str(), n)).collect(),
        deploys: recent,
        took_ms: started.elapsed().as_millis(),
    };
    Ok(html(&page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_proto::{RedPoint, ServiceRow};

    fn series(points: &[(u64, u64, f64)]) -> RedSeries {
        RedSeries {
            total: ServiceRow {
                service: "s".into(),
                version: String::new(),
                requests: points.iter().map(|p| p.0).sum(),
                errors: points.iter().map(|p| p.1).sum(),
                request_rate: 0.0,
                error_ratio: 0.0,
                p50_ms: 0.0,
                p95_ms: 0.0,
                p99_ms: 0.0,
                last_seen: String::new(),
            },
            operation: String::new(),
            step_ms: 1000,
            points: points
                .iter()
                .map(|&(requests, errors, p99_ms)| RedPoint {
                    start_unix_ms: 0,
                    requests,
                    errors,
                    p99_ms,
                })
                .collect(),
        }
    }

    #[test]
    fn health_compares_recent_red_with_the_services_own_baseline() {
        let steady = series(&[(100, 1, 10.0); 10]);
        assert_eq!(
            health(Some(&steady), Some((3, false)), 3).0,
            Health::Healthy
        );
        assert_eq!(health(Some(&steady), Some((3, false)), 0).0, Health::Down);
        assert_eq!(
            health(Some(&steady), Some((3, false)), 2).0,
            Health::Degraded
        );
        assert_eq!(health(Some(&steady), Some((3, true)), 0).0, Health::Stopped);
        let mut erroring = vec![(100, 1, 10.0); 8];
        erroring.extend([(100, 20, 10.0); 2]);
        let (h, why) = health(Some(&series(&erroring)), Some((3, false)), 3);
        assert_eq!(h, Health::Degraded, "{why}");
        let mut failing = vec![(100, 1, 10.0); 8];
        failing.extend([(100, 80, 10.0); 2]);
        assert_eq!(health(Some(&series(&failing)), None, 0).0, Health::Down);
        let mut slow = vec![(100, 1, 10.0); 8];
        slow.extend([(100, 1, 50.0); 2]);
        assert_eq!(health(Some(&series(&slow)), None, 0).0, Health::Degraded);
        // Too few recent requests to judge by RED.
        let mut quiet = vec![(100, 0, 10.0); 8];
        quiet.extend([(3, 3, 10.0); 2]);
        assert_eq!(health(Some(&series(&quiet)), None, 0).0, Health::Healthy);
        assert_eq!(health(None, None, 0).0, Health::Idle);
    }
}
