//! Service routing on the node: for each routed service, a listener on its port at the node's service address that
//! reverse-proxies HTTP/1.1 and HTTP/2 to the service's ready instances on any node, and turns every request into a
//! span. The table comes from the plane with the assignments (`routes`: each service's ready endpoints and the
//! share of requests per version); listeners open and close as services come and go.
//!
//! Balancing: a request first picks a version by the weights (when the plane set any; canary steps drive them),
//! then the endpoint of that version with the fewest requests in flight (least outstanding requests), ties broken
//! at random. While a blue-green rollout judges its new version, safe requests are also copied to it (mirrored)
//! and both answers recorded in one span; the live answer never waits for the copy. An instance leaves the table when it stops being ready (its agent reports it stopping before it
//! sends SIGTERM), so new requests stop going to it while those in flight finish.

mod proxy;
mod spans;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use gantry_proto::instances::{Assignments, ServiceRoute};
use gantry_support::CancellationToken;
use rand::Rng;
use tokio::sync::watch;

pub use spans::SpanSink;

/// One endpoint of a service, with its requests in flight.
#[derive(Debug)]
pub struct Upstream {
    /// The instance.
    pub instance_id: String,
    /// Its version.
    pub version: String,
    /// `host:port`.
    pub address: String,
    /// Requests in flight to it through this router.
    pub outstanding: AtomicUsize,
}

/// A service's routing table.
#[derive(Debug, Default)]
pub struct Table {
    /// The ready endpoints.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Share of requests per version, percent (empty: all endpoints alike).
    pub weights: BTreeMap<String, f64>,
    /// Stickiness: requests with the same key go to the same endpoint while it is in the table.
    pub sticky: Option<gantry_proto::platform::Sticky>,
    /// Traffic mirroring to a version being judged (blue-green's preview), when the plane asks for it.
    pub mirror: Option<gantry_proto::instances::Mirror>,
}

impl Table {
    /// Picks an endpoint for one request (see the module), skipping `avoid` when another is available. With a
    /// stickiness `key`, the version and the endpoint are drawn from the key's hash instead (rendezvous hashing:
    /// when an endpoint leaves, only its keys move).
    pub fn pick(&self, avoid: Option<&str>, key: Option<&[u8]>) -> Option<Arc<Upstream>> {
        self.pick_with_share(avoid, key, None)
            .map(|(upstream, _)| upstream)
    }

    /// [`Table::pick`], honouring a requested `version` (the `x-gantry-version` header: blue-green's preview)
    /// when it has endpoints, and also giving the probability the chosen version had of being picked (the
    /// canary judge's `gantry.route.share`): `None` when the table has no weights.
    pub fn pick_with_share(
        &self,
        avoid: Option<&str>,
        key: Option<&[u8]>,
        version: Option<&str>,
    ) -> Option<(Arc<Upstream>, Option<f64>)> {
        let candidates: Vec<&Arc<Upstream>> = {
            let usable: Vec<&Arc<Upstream>> = self
                .upstreams
                .iter()
                .filter(|u| Some(u.instance_id.as_str()) != avoid)
                .collect();
            if usable.is_empty() {
                self.upstreams.iter().collect()
            } else {
                usable
            }
        };
        if candidates.is_empty() {
            return None;
        }
        let draw = key.map(|key| f64::from(crc32fast::hash(key)) / f64::from(u32::MAX));
        let requested = version.filter(|v| candidates.iter().any(|u| u.version == *v));
        let (version, share) = match requested {
            Some(version) => (Some(version.to_owned()), Some(1.0)),
            None => match self.pick_version(&candidates, draw) {
                Some((version, share)) => (Some(version), Some(share)),
                None => (None, None),
            },
        };
        let pool: Vec<&Arc<Upstream>> = match &version {
            Some(version) => candidates
                .iter()
                .copied()
                .filter(|u| &u.version == version)
                .collect(),
            None => candidates,
        };
        if let Some(key) = key {
            let score = |u: &Arc<Upstream>| {
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(key);
                hasher.update(u.instance_id.as_bytes());
                hasher.finalize()
            };
            return pool
                .iter()
                .max_by_key(|u| score(u))
                .map(|u| (Arc::clone(*u), share));
        }
        // One reading of the counts: other requests change them meanwhile.
        let loads: Vec<(&Arc<Upstream>, usize)> = pool
            .iter()
            .map(|u| (*u, u.outstanding.load(Ordering::Relaxed)))
            .collect();
        let least = loads.iter().map(|(_, load)| *load).min()?;
        let tied: Vec<&Arc<Upstream>> = loads
            .iter()
            .filter(|(_, load)| *load == least)
            .map(|(u, _)| *u)
            .collect();
        let chosen = tied[rand::rng().random_range(0..tied.len())];
        Some((Arc::clone(chosen), share))
    }

    /// A version drawn by the weights among the versions that have endpoints (at `draw` in [0, 1] when given, at
    /// random otherwise), with its share of the weights; `None` without weights.
    fn pick_version(
        &self,
        candidates: &[&Arc<Upstream>],
        draw: Option<f64>,
    ) -> Option<(String, f64)> {
        if self.weights.is_empty() {
            return None;
        }
        let available: Vec<(&String, f64)> = self
            .weights
            .iter()
            .filter(|(version, weight)| {
                **weight > 0.0 && candidates.iter().any(|u| &u.version == *version)
            })
            .map(|(version, weight)| (version, *weight))
            .collect();
        let total: f64 = available.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            return None;
        }
        let mut draw = match draw {
            Some(fraction) => fraction.clamp(0.0, 1.0) * total * (1.0 - f64::EPSILON),
            None => rand::rng().random_range(0.0..total),
        };
        for (version, weight) in &available {
            if draw < *weight {
                return Some(((*version).clone(), weight / total));
            }
            draw -= weight;
        }
        available
            .last()
            .map(|(v, weight)| ((*v).clone(), weight / total))
    }
}

/// The tables of every routed service, shared with the listeners.
pub type Tables = Arc<RwLock<BTreeMap<String, Arc<Table>>>>;

/// Keeps one listener per routed service in step with the plane's routes, until `stop`.
pub async fn run(
    host: IpAddr,
    mut routes: watch::Receiver<Option<Arc<Assignments>>>,
    spans: SpanSink,
    limits: gantry_net::Limits,
    stop: CancellationToken,
) {
    let tables: Tables = Arc::default();
    let client = proxy::client();
    // Per service: its port and the token that stops its listener.
    let mut listeners: BTreeMap<String, (u16, CancellationToken)> = BTreeMap::new();
    loop {
        let current = routes.borrow_and_update().clone();
        if let Some(assignments) = current {
            update(&tables, &assignments.routes, |wanted| {
                // Close listeners of services gone or moved to another port.
                listeners.retain(|service, (port, token)| {
                    let keep = wanted
                        .iter()
                        .any(|r| &r.service == service && r.port == *port);
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for route in wanted {
                    if listeners.contains_key(&route.service) {
                        continue;
                    }
                    let token = stop.child_token();
                    listeners.insert(route.service.clone(), (route.port, token.clone()));
                    let state = proxy::State {
                        service: route.service.clone(),
                        tables: tables.clone(),
                        client: client.clone(),
                        spans: spans.clone(),
                        mirrors: Arc::new(tokio::sync::Semaphore::new(proxy::MIRRORS_IN_FLIGHT)),
                    };
                    let address = SocketAddr::new(host, route.port);
                    let limits = limits.clone();
                    tokio::spawn(async move {
                        // The port may be held for a moment by a listener just closed: retry briefly.
                        let mut attempt = 0;
                        let listener = loop {
                            match tokio::net::TcpListener::bind(address).await {
                                Ok(listener) => break listener,
                                Err(error) if attempt < 20 && !token.is_cancelled() => {
                                    attempt += 1;
                                    if attempt == 1 {
                                        tracing::warn!(service = %state.service, %address, %error, "routed port busy; retrying");
                                    }
                                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                                }
                                Err(error) => {
                                    tracing::error!(service = %state.service, %address, %error, "cannot listen on the routed port");
                                    return;
                                }
                            }
                        };
                        tracing::info!(service = %state.service, %address, "routing");
                        let app = proxy::app(state);
                        if let Err(error) =
                            gantry_net::serve(listener, app, limits, token, "service router").await
                        {
                            tracing::error!(%error, "service router failed");
                        }
                    });
                }
            });
        }
        tokio::select! {
            () = stop.cancelled() => break,
            changed = routes.changed() => if changed.is_err() { break },
        }
    }
    for (_, (_, token)) in listeners {
        token.cancel();
    }
}

/// Replaces the tables with `routes`, keeping each surviving endpoint's in-flight count, then lets `listeners`
/// open and close listeners.
fn update(tables: &Tables, routes: &[ServiceRoute], listeners: impl FnOnce(&[ServiceRoute])) {
    {
        let mut tables = tables.write().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        for route in routes {
            let old = tables.get(&route.service);
            let upstreams = route
                .endpoints
                .iter()
                .map(|endpoint| {
                    old.and_then(|t| {
                        t.upstreams
                            .iter()
                            .find(|u| {
                                u.instance_id == endpoint.instance_id
                                    && u.address == endpoint.address
                            })
                            .cloned()
                    })
                    .unwrap_or_else(|| {
                        Arc::new(Upstream {
                            instance_id: endpoint.instance_id.clone(),
                            version: endpoint.version.clone(),
                            address: endpoint.address.clone(),
                            outstanding: AtomicUsize::new(0),
                        })
                    })
                })
                .collect();
            next.insert(
                route.service.clone(),
                Arc::new(Table {
                    upstreams,
                    weights: route.weights.clone(),
                    sticky: route.sticky.clone(),
                    mirror: route.mirror.clone(),
                }),
            );
        }
        *tables = next;
    }
    listeners(routes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(id: &str, version: &str, outstanding: usize) -> Arc<Upstream> {
        Arc::new(Upstream {
            instance_id: id.into(),
            version: version.into(),
            address: format!("{id}:1"),
            outstanding: AtomicUsize::new(outstanding),
        })
    }

    #[test]
    fn least_outstanding_then_weights() {
        let table = Table {
            upstreams: vec![
                upstream("a", "1", 3),
                upstream("b", "1", 1),
                upstream("c", "1", 2),
            ],
            weights: BTreeMap::new(),
            sticky: None,
            mirror: None,
        };
        for _ in 0..20 {
            assert_eq!(table.pick(None, None).unwrap().instance_id, "b");
        }
        assert_eq!(
            table.pick(Some("b"), None).unwrap().instance_id,
            "c",
            "a retry avoids the endpoint that failed"
        );
        let weighted = Table {
            upstreams: vec![upstream("old", "1", 0), upstream("new", "2", 0)],
            weights: BTreeMap::from([("1".to_owned(), 90.0), ("2".to_owned(), 10.0)]),
            sticky: None,
            mirror: None,
        };
        let new = (0..10_000)
            .filter(|_| weighted.pick(None, None).unwrap().version == "2")
            .count();
        assert!((700..1300).contains(&new), "about 10% to the canary: {new}");
        let only_old = Table {
            upstreams: vec![upstream("old", "1", 0)],
            weights: BTreeMap::from([("1".to_owned(), 0.0), ("2".to_owned(), 100.0)]),
            sticky: None,
            mirror: None,
        };
        assert_eq!(
            only_old.pick(None, None).unwrap().version,
            "1",
            "a version without endpoints is skipped"
        );
        assert!(Table::default().pick(None, None).is_none());
    }

    #[test]
    fn a_sticky_key_keeps_its_endpoint_and_only_a_leaving_ones_keys_move() {
        let all = vec![
            upstream("a", "1", 0),
            upstream("b", "1", 0),
            upstream("c", "1", 0),
        ];
        let table = Table {
            upstreams: all.clone(),
            weights: BTreeMap::new(),
            sticky: None,
            mirror: None,
        };
        let keys: Vec<String> = (0..300).map(|n| format!("user-{n}")).collect();
        let before: Vec<String> = keys
            .iter()
            .map(|k| {
                table
                    .pick(None, Some(k.as_bytes()))
                    .unwrap()
                    .instance_id
                    .clone()
            })
            .collect();
        for (key, first) in keys.iter().zip(&before) {
            assert_eq!(
                &table.pick(None, Some(key.as_bytes())).unwrap().instance_id,
                first,
                "same key, same endpoint"
            );
        }
        let spread = ["a", "b", "c"].map(|id| before.iter().filter(|b| *b == id).count());
        assert!(
            spread.iter().all(|n| *n > 50),
            "keys spread over endpoints: {spread:?}"
        );
        let fewer = Table {
            upstreams: all[..2].to_vec(),
            weights: BTreeMap::new(),
            sticky: None,
            mirror: None,
        };
        for (key, first) in keys.iter().zip(&before) {
            let now = fewer
                .pick(None, Some(key.as_bytes()))
                .unwrap()
                .instance_id
                .clone();
            if first != "c" {
                assert_eq!(&now, first, "a key whose endpoint stayed does not move");
            }
        }
    }
}
