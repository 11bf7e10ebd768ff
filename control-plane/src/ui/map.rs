//! `GET /map`: the service map of the chosen range, built live from its spans (each server span whose parent is a
//! span of another service is a request on that edge, the routers' spans included), with request rate and error
//! ratio on each edge and nodes coloured by their error ratio; laid out here as layered SVG (callers left of the
//! services they call, the longest call path setting each column).

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use gantry_proto::ServiceMap;
use serde::Deserialize;

use super::{Layout, Range, RangePicker, UiError, Viewer, format, html};
use crate::api::{ApiError, AppState};

/// Spans read at most for one map (the newest of the range).
pub const MAX_SPANS: usize = 50_000;

const NODE_WIDTH: f64 = 170.0;
const NODE_HEIGHT: f64 = 44.0;
const COLUMN: f64 = 260.0;
const ROW: f64 = 80.0;
const MARGIN: f64 = 30.0;

/// A placed service.
pub struct Node {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// The service.
    pub name: String,
    /// Its name as drawn: cut to fit the box.
    pub short: String,
    /// `healthy`, `degraded`, `down` or `idle`.
    pub class: &'static str,
    /// Its requests and errors, in words.
    pub label: String,
}

/// A drawn edge.
pub struct Edge {
    /// The SVG path.
    pub d: String,
    /// Where its label goes.
    pub label_x: f64,
    /// See `label_x`.
    pub label_y: f64,
    /// Rate and error ratio.
    pub label: String,
    /// `healthy`, `degraded` or `down`, by its error ratio.
    pub class: &'static str,
    /// The tooltip.
    pub title: String,
}

/// Colour class of an error ratio: above 5% down, above 1% degraded.
fn class(requests: u64, errors: u64) -> &'static str {
    if requests == 0 {
        return "idle";
    }
    let ratio = errors as f64 / requests as f64;
    if ratio > 0.05 {
        "down"
    } else if ratio > 0.01 {
        "degraded"
    } else {
        "healthy"
    }
}

/// Lays out `map` over `seconds` of data: columns by the longest call path reaching each service (cycles cut after
/// as many passes as there are services), rows by name.
pub fn layout(map: &ServiceMap, seconds: f64) -> (Vec<Node>, Vec<Edge>, f64, f64) {
    let mut names: BTreeSet<&str> = map.services.iter().map(|s| s.0.as_str()).collect();
    for edge in &map.edges {
        names.insert(&edge.client);
        names.insert(&edge.server);
    }
    let mut depth: BTreeMap<&str, usize> = names.iter().map(|n| (*n, 0)).collect();
    for _ in 0..names.len() {
        let mut changed = false;
        for edge in &map.edges {
            let next = depth[edge.client.as_str()] + 1;
            if edge.client != edge.server
                && depth[edge.server.as_str()] < next
                && next < names.len()
            {
                depth.insert(&edge.server, next);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut columns: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (name, d) in &depth {
        columns.entry(*d).or_default().push(name);
    }
    let stats: BTreeMap<&str, (u64, u64)> = map
        .services
        .iter()
        .map(|(s, r, e)| (s.as_str(), (*r, *e)))
        .collect();
    let mut position: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut nodes = Vec::new();
    let rows = columns.values().map(Vec::len).max().unwrap_or(0);
    for (d, members) in &columns {
        for (row, name) in members.iter().enumerate() {
            let (x, y) = (MARGIN + *d as f64 * COLUMN, MARGIN + row as f64 * ROW);
            position.insert(name, (x, y));
            let (requests, errors) = stats.get(name).copied().unwrap_or((0, 0));
            nodes.push(Node {
                x,
                y,
                name: (*name).to_owned(),
                short: if name.chars().count() > 20 {
                    format!("{}…", name.chars().take(19).collect::<String>())
                } else {
                    (*name).to_owned()
                },
                class: class(requests, errors),
                label: if requests == 0 {
                    "no server spans".to_owned()
                } else {
                    format!(
                        "{}/s · {} errors",
                        format::number(requests as f64 / seconds),
                        format::percent(errors as f64 / requests as f64)
                    )
                },
            });
        }
    }
    let edges = map
        .edges
        .iter()
        .filter_map(|edge| {
            let (cx, cy) = *position.get(edge.client.as_str())?;
            let (sx, sy) = *position.get(edge.server.as_str())?;
            let (x0, y0) = (cx + NODE_WIDTH, cy + NODE_HEIGHT / 2.0);
            let (x1, y1) = (sx, sy + NODE_HEIGHT / 2.0);
            let d = if x1 > x0 {
                let mid = (x0 + x1) / 2.0;
                format!("M{x0:.1},{y0:.1} C{mid:.1},{y0:.1} {mid:.1},{y1:.1} {x1:.1},{y1:.1}")
            } else {
                // A call back to an earlier column: around below.
                let below = y0.max(y1) + ROW / 2.0;
                format!(
                    "M{x0:.1},{y0:.1} C{:.1},{below:.1} {:.1},{below:.1} {x1:.1},{y1:.1}",
                    x0 + 60.0,
                    x1 - 60.0
                )
            };
            let rate = edge.requests as f64 / seconds;
            let ratio = edge.errors as f64 / edge.requests.max(1) as f64;
            Some(Edge {
                d,
                label_x: (x0 + x1) / 2.0,
                label_y: (y0 + y1) / 2.0 - 6.0,
                label: format!("{}/s · {}", format::number(rate), format::percent(ratio)),
                class: class(edge.requests, edge.errors),
                title: format!(
                    "{} → {}: {} requests, {} failed",
                    edge.client, edge.server, edge.requests, edge.errors
                ),
            })
        })
        .collect();
    let width = MARGIN * 2.0 + columns.len().max(1) as f64 * COLUMN;
    let height = MARGIN * 2.0 + rows.max(1) as f64 * ROW;
    (nodes, edges, width, height)
}

#[derive(Template)]
#[template(path = "map.html")]
struct MapPage {
    layout: Layout,
    picker: RangePicker,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    width: f64,
    height: f64,
    node_width: f64,
    node_height: f64,
    map: ServiceMap,
    covered: String,
}

/// `?from=&to=` of the map.
#[derive(Debug, Deserialize)]
pub struct MapQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /map`.
pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<MapQuery>,
) -> Result<Response, UiError> {
    let range = Range::parse(query.from.as_deref(), query.to.as_deref(), "-15m")?;
    let map = state
        .store
        .service_map(range.range, MAX_SPANS)
        .await
        .map_err(ApiError::from)?;
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    // Rates over the range, or over the part the spans read cover when the cap cut it.
    let from_ns = if map.spans_read < map.spans_matched {
        map.covered_from_ns.max(range.range.from_ns)
    } else {
        range.range.from_ns
    };
    let seconds = ((range.range.to_ns.min(now_ns) - from_ns) as f64 / 1e9).max(1.0);
    let (nodes, edges, width, height) = layout(&map, seconds);
    let page = MapPage {
        layout: viewer.layout("map", "Service map".into()),
        picker: range.picker(&[]),
        nodes,
        edges,
        width,
        height,
        node_width: NODE_WIDTH,
        node_height: NODE_HEIGHT,
        covered: format::clock_ns(map.covered_from_ns),
        map,
    };
    Ok(html(&page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_proto::ServiceEdge;

    #[test]
    fn callers_sit_left_of_what_they_call_and_cycles_end() {
        let edge = |client: &str, server: &str| ServiceEdge {
            client: client.into(),
            server: server.into(),
            requests: 10,
            errors: 1,
        };
        let map = ServiceMap {
            edges: vec![
                edge("gateway", "accounts"),
                edge("gateway", "payments"),
                edge("payments", "ledger"),
                edge("ledger", "payments"),
            ],
            services: vec![("gateway".into(), 10, 0), ("ledger".into(), 10, 5)],
            spans_read: 0,
            spans_matched: 0,
            covered_from_ns: 0,
            took_ms: 0,
        };
        let (nodes, edges, _, _) = layout(&map, 10.0);
        let x = |name: &str| nodes.iter().find(|n| n.name == name).unwrap().x;
        assert!(x("gateway") < x("accounts") && x("gateway") < x("payments"));
        assert!(x("payments") < x("ledger") || x("ledger") < x("payments"));
        assert_eq!(edges.len(), 4);
        assert_eq!(
            nodes.iter().find(|n| n.name == "ledger").unwrap().class,
            "down"
        );
        assert_eq!(edges[0].label, "1/s · 10%");
    }
}
