//! The load generator of the demo: a steady request rate to `gateway`'s routed address, counting answers by
//! outcome, so that a change made under load (scaling, a restart, a rollout) shows how many requests it failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Requests sent and their outcomes.
#[derive(Debug, Default)]
pub struct Counts {
    /// Answered 2xx.
    pub ok: AtomicU64,
    /// Answered otherwise, or not at all.
    pub failed: AtomicU64,
}

/// Sends `rate` requests per second to `url` (none when `rate` is 0) until `stop` resolves, counting outcomes in
/// `counts` as they come.
pub async fn run(
    url: String,
    rate: f64,
    counts: Arc<Counts>,
    stop: impl std::future::Future<Output = ()>,
) {
    if rate <= 0.0 {
        stop.await;
        return;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a plain HTTP client");
    let period = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 10_000.0));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let (client, url, counts) = (client.clone(), url.clone(), counts.clone());
        tokio::spawn(async move {
            let ok = client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
