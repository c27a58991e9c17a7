//! Hedged origin GETs: when a GET's head has not come after the shard's recent
//! `hedge.percentile` latency (never before `hedge.min_delay_ms`), a second identical
//! GET goes out and whichever answers first is used; the other is dropped (its bridge
//! task sees the closed reply channel and lets the connection go).
//!
//! The extra load is capped by a token bucket: every GET adds `hedge.max_fraction` of a
//! token (at most [`BURST`] kept), a hedge spends one. Latencies are time to the
//! response head (what the bridge returns: the body streams after), per shard, in two
//! rotating windows of [`WINDOW`] samples, so the percentile follows the origin's recent
//! behaviour. Lives in the object layer, not in the origin bridge, so it applies to
//! whichever origin a key's GET goes to.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use hdrhistogram::Histogram;
use nearcache_s3::{GetObject, OriginError};

use super::metrics::ObjectMetrics;
use crate::config::HedgeConfig;

/// Latency samples per window.
const WINDOW: u64 = 1000;
/// Samples needed before the percentile is trusted (until then: `min_delay_ms`).
const MIN_SAMPLES: u64 = 20;
/// Hedge tokens kept at most: bounds a burst of hedges after a quiet, fast period.
const BURST: f64 = 10.0;
/// Highest latency recorded (longer ones are clamped).
const MAX_MS: u64 = 600_000;

/// One shard's hedging state.
pub struct Hedger {
    cfg: HedgeConfig,
    current: RefCell<Histogram<u64>>,
    previous: RefCell<Histogram<u64>>,
    tokens: Cell<f64>,
}

impl Hedger {
    pub fn new(cfg: &HedgeConfig) -> Hedger {
        let h = || Histogram::new_with_bounds(1, MAX_MS, 2).expect("valid histogram bounds");
        Hedger {
            cfg: cfg.clone(),
            current: RefCell::new(h()),
            previous: RefCell::new(h()),
            tokens: Cell::new(0.0),
        }
    }

    fn record(&self, took: Duration) {
        let ms = (took.as_millis() as u64).clamp(1, MAX_MS);
        let mut cur = self.current.borrow_mut();
        let _ = cur.record(ms);
        if cur.len() >= WINDOW {
            let mut prev = self.previous.borrow_mut();
            std::mem::swap(&mut *cur, &mut *prev);
            cur.reset();
        }
    }

    /// The delay after which a GET starting now is hedged; None: not hedged (off, or the
    /// budget is spent). Takes this GET's share of the budget.
    fn delay(&self) -> Option<Duration> {
        if !self.cfg.enabled || self.cfg.max_fraction <= 0.0 {
            return None;
        }
        self.tokens
            .set((self.tokens.get() + self.cfg.max_fraction).min(BURST));
        if self.tokens.get() < 1.0 {
            return None;
        }
        let cur = self.current.borrow();
        let prev = self.previous.borrow();
        let window = if cur.len() >= MIN_SAMPLES {
            &*cur
        } else {
            &*prev
        };
        let p_ms = if window.len() >= MIN_SAMPLES {
            window.value_at_quantile(self.cfg.percentile)
        } else {
            0
        };
        Some(Duration::from_millis(p_ms.max(self.cfg.min_delay_ms)))
    }

    fn spend(&self) {
        self.tokens.set(self.tokens.get() - 1.0);
    }
}

/// Runs the GET `make` makes, hedged with a second one when the first is slow. The first
/// success wins; when one request fails the other's answer is taken.
pub async fn get<F, Fut>(
    hedger: &Hedger,
    metrics: &ObjectMetrics,
    make: F,
) -> Result<GetObject, OriginError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<GetObject, OriginError>>,
{
    let start = Instant::now();
    let first = Box::pin(make());
    let Some(delay) = hedger.delay() else {
        let r = first.await;
        if r.is_ok() {
            hedger.record(start.elapsed());
        }
        return r;
    };
    let timer = Box::pin(monoio::time::sleep(delay));
    let first = match select(first, timer).await {
        Either::Left((r, _)) => {
            if r.is_ok() {
                hedger.record(start.elapsed());
            }
            return r;
        }
        Either::Right(((), first)) => first,
    };
    hedger.spend();
    metrics.hedges_sent.fetch_add(1, Relaxed);
    let second = Box::pin(make());
    match select(first, second).await {
        Either::Left((Ok(r), _)) => {
            hedger.record(start.elapsed());
            Ok(r)
        }
        Either::Right((Ok(r), _)) => {
            metrics.hedges_won.fetch_add(1, Relaxed);
            hedger.record(start.elapsed());
            Ok(r)
        }
        Either::Left((Err(_), other)) => {
            let r = other.await;
            if r.is_ok() {
                metrics.hedges_won.fetch_add(1, Relaxed);
            }
            r
        }
        Either::Right((Err(_), other)) => other.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_fraction: f64) -> HedgeConfig {
        HedgeConfig {
            enabled: true,
            percentile: 0.9,
            max_fraction,
            min_delay_ms: 5,
        }
    }

    #[test]
    fn the_budget_caps_hedges_at_the_fraction() {
        let h = Hedger::new(&cfg(0.1));
        let mut hedged = 0;
        for _ in 0..1000 {
            if h.delay().is_some() {
                h.spend();
                hedged += 1;
            }
        }
        assert!(
            (99..=100).contains(&hedged),
            "{hedged} hedges of 1000 at 10 %"
        );
    }

    #[test]
    fn the_delay_follows_the_recorded_percentile() {
        let h = Hedger::new(&cfg(1.0));
        assert_eq!(h.delay(), Some(Duration::from_millis(5)), "no samples yet");
        for i in 1..=100 {
            h.record(Duration::from_millis(i));
        }
        let d = h.delay().unwrap().as_millis();
        assert!(
            (89..=92).contains(&d),
            "p90 of 1..=100 ms is about 90, got {d}"
        );
        let off = Hedger::new(&HedgeConfig {
            enabled: false,
            ..cfg(1.0)
        });
        assert_eq!(off.delay(), None);
    }
}
