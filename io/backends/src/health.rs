//! Per-backend health: a circuit breaker fed by the outcome of every request, the
//! maintenance switch, and the numbers the admin endpoint and `/metrics` show.
//!
//! Breaker states (lock-free, shared by every shard thread):
//!
//! ```text
//!   closed ──(failure_threshold consecutive failures, or stall_limit requests in flight)──> open
//!   open ──(cooldown passed: the next request is let through as the one probe)──> half-open
//!   half-open ──probe answers──> closed        half-open ──probe fails──> open (new cooldown)
//! ```
//!
//! "Stalled" follows akubra: a backend that holds `stall_limit` requests in flight at once
//! (connections that send nothing back) is taken out of the pool like one that fails.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nearcache_s3::OriginError;

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Off for a set of one backend: with nowhere else to go, callers keep trying it.
    pub enabled: bool,
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit keeps the backend out before one probe is let through.
    pub cooldown: Duration,
    /// Requests in flight at once that count as stalled and open the circuit.
    pub stall_limit: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_threshold: 3,
            cooldown: Duration::from_secs(5),
            stall_limit: 64,
        }
    }
}

/// What the admin endpoint calls a backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    Healthy,
    /// Closed circuit, but recent requests failed.
    Degraded,
    CircuitOpen,
    Maintenance,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Healthy => "healthy",
            BackendState::Degraded => "degraded",
            BackendState::CircuitOpen => "circuit_open",
            BackendState::Maintenance => "maintenance",
        }
    }
}

/// Whether a request may go to a backend now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The circuit is open and its cool-down over: this request is the probe.
    Probe,
    No,
}

/// How an origin answer counts for health: an answer (even 404 or 4xx) shows the backend
/// works; timeouts, connection errors, 5xx and refused credentials do not.
pub fn is_backend_failure(e: &OriginError) -> bool {
    match e {
        OriginError::Unavailable(_) | OriginError::Closed | OriginError::Denied(_) => true,
        OriginError::Service { status, .. } => *status >= 500,
        OriginError::NotFound
        | OriginError::NotModified
        | OriginError::InvalidRange
        | OriginError::Rejected(_) => false,
    }
}

/// Weight of the newest sample in the moving averages, in 1/1000.
const EWMA_NEW: u64 = 200;

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1: 0 means "closed" in `open_until_ms`.
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    /// 0: closed; else the (process-relative) ms until which the circuit stays open.
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    maintenance: AtomicBool,
    inflight: AtomicU32,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub circuit_opens: AtomicU64,
    /// Reads that found the key missing here while another backend had it.
    pub drift: AtomicU64,
    /// Moving average of the error share, in millionths.
    error_rate_ppm: AtomicU64,
    /// Moving average of request latency, in microseconds (0: no sample yet).
    latency_us: AtomicU64,
}

impl Health {
    pub fn state(&self) -> BackendState {
        if self.maintenance.load(Relaxed) {
            BackendState::Maintenance
        } else if self.open_until_ms.load(Relaxed) != 0 {
            BackendState::CircuitOpen
        } else if self.consecutive_failures.load(Relaxed) > 0
            || self.error_rate_ppm.load(Relaxed) > 10_000
        {
            BackendState::Degraded
        } else {
            BackendState::Healthy
        }
    }

    pub fn in_maintenance(&self) -> bool {
        self.maintenance.load(Relaxed)
    }

    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Relaxed);
    }

    /// Whether the circuit has opened and not closed since (cool-down over or not).
    pub fn is_tripped(&self) -> bool {
        self.open_until_ms.load(Relaxed) != 0
    }

    /// Whether the circuit is open now (cool-down not over).
    pub fn is_open(&self) -> bool {
        let until = self.open_until_ms.load(Relaxed);
        until != 0 && now_ms() < until
    }

    /// Whether a request may go here now; a `Probe` must be followed by [`Health::record`].
    pub fn admit(&self, cfg: &BreakerConfig) -> Admit {
        if self.in_maintenance() {
            return Admit::No;
        }
        if !cfg.enabled {
            return Admit::Yes;
        }
        let until = self.open_until_ms.load(Relaxed);
        if until == 0 {
            if self.inflight.load(Relaxed) >= cfg.stall_limit.max(1) {
                self.open(cfg);
                tracing::warn!(
                    in_flight = cfg.stall_limit,
                    "origin backend has too many stalled requests: circuit opened"
                );
                return Admit::No;
            }
            return Admit::Yes;
        }
        if now_ms() < until {
            return Admit::No;
        }
        match self.probing.compare_exchange(false, true, Relaxed, Relaxed) {
            Ok(_) => Admit::Probe,
            Err(_) => Admit::No,
        }
    }

    fn open(&self, cfg: &BreakerConfig) {
        let was = self
            .open_until_ms
            .swap(now_ms() + cfg.cooldown.as_millis() as u64, Relaxed);
        self.probing.store(false, Relaxed);
        if was == 0 {
            self.circuit_opens.fetch_add(1, Relaxed);
        }
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn begin(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Relaxed);
        InFlight(self)
    }

    pub fn in_flight(&self) -> u32 {
        self.inflight.load(Relaxed)
    }

    /// Feeds one request's outcome into the breaker and the averages.
    pub fn record(&self, cfg: &BreakerConfig, failed: bool, latency: Duration) {
        self.requests.fetch_add(1, Relaxed);
        ewma(&self.error_rate_ppm, if failed { 1_000_000 } else { 0 });
        if failed {
            self.failures.fetch_add(1, Relaxed);
            let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
            let probing = self.probing.load(Relaxed);
            if cfg.enabled && (n >= cfg.failure_threshold.max(1) || probing) {
                if self.open_until_ms.load(Relaxed) == 0 {
                    tracing::warn!(
                        consecutive_failures = n,
                        "origin backend failing: circuit opened"
                    );
                }
                self.open(cfg);
            }
        } else {
            let us = latency.as_micros().min(u64::MAX as u128) as u64;
            if self.latency_us.load(Relaxed) == 0 {
                self.latency_us.store(us.max(1), Relaxed);
            } else {
                ewma(&self.latency_us, us.max(1));
            }
            self.consecutive_failures.store(0, Relaxed);
            if self.open_until_ms.swap(0, Relaxed) != 0 {
                tracing::info!("origin backend answers again: circuit closed");
            }
            self.probing.store(false, Relaxed);
        }
    }

    /// Releases a probe slot that was granted but not used.
    pub fn release_probe(&self) {
        self.probing.store(false, Relaxed);
    }

    /// Moving average of the error share (0.0..=1.0).
    pub fn error_rate(&self) -> f64 {
        self.error_rate_ppm.load(Relaxed) as f64 / 1e6
    }

    /// Moving average of request latency (None before the first success).
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

fn ewma(cell: &AtomicU64, sample: u64) {
    let _ = cell.fetch_update(Relaxed, Relaxed, |old| {
        Some((old * (1000 - EWMA_NEW) + sample * EWMA_NEW) / 1000)
    });
}

/// A request in flight on a backend (see [`Health::begin`]).
pub struct InFlight<'a>(&'a Health);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_threshold: 2,
            cooldown: Duration::from_millis(50),
            stall_limit: 3,
        }
    }

    #[test]
    fn consecutive_failures_open_then_one_probe_closes() {
        let h = Health::default();
        let c = cfg();
        assert_eq!(h.admit(&c), Admit::Yes);
        h.record(&c, true, Duration::ZERO);
        assert_eq!(h.state(), BackendState::Degraded);
        h.record(&c, true, Duration::ZERO);
        assert_eq!(h.state(), BackendState::CircuitOpen);
        assert_eq!(h.admit(&c), Admit::No);
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.admit(&c) != Admit::Probe {
            assert!(Instant::now() < deadline, "no probe after the cool-down");
            std::thread::yield_now();
        }
        // Only one probe at a time.
        assert_eq!(h.admit(&c), Admit::No);
        h.record(&c, false, Duration::from_millis(3));
        assert_eq!(h.admit(&c), Admit::Yes);
        assert_eq!(h.circuit_opens.load(Relaxed), 1);
    }

    #[test]
    fn failed_probe_reopens() {
        let h = Health::default();
        let c = cfg();
        h.record(&c, true, Duration::ZERO);
        h.record(&c, true, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.admit(&c) != Admit::Probe {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        h.record(&c, true, Duration::ZERO);
        assert!(h.is_open());
        assert_eq!(h.admit(&c), Admit::No);
    }

    #[test]
    fn stalled_requests_open_the_circuit() {
        let h = Health::default();
        let c = cfg();
        let g: Vec<_> = (0..3).map(|_| h.begin()).collect();
        assert_eq!(h.admit(&c), Admit::No);
        assert_eq!(h.state(), BackendState::CircuitOpen);
        drop(g);
        assert_eq!(h.in_flight(), 0);
    }

    #[test]
    fn disabled_breaker_and_maintenance() {
        let h = Health::default();
        let c = BreakerConfig {
            enabled: false,
            ..cfg()
        };
        for _ in 0..10 {
            h.record(&c, true, Duration::ZERO);
        }
        assert_eq!(h.admit(&c), Admit::Yes);
        h.set_maintenance(true);
        assert_eq!(h.admit(&c), Admit::No);
        assert_eq!(h.state(), BackendState::Maintenance);
    }

    #[test]
    fn answers_are_not_failures() {
        assert!(!is_backend_failure(&OriginError::NotFound));
        assert!(is_backend_failure(&OriginError::Unavailable("x".into())));
        assert!(is_backend_failure(&OriginError::Service {
            status: 503,
            code: "SlowDown".into(),
            message: String::new()
        }));
        assert!(!is_backend_failure(&OriginError::Service {
            status: 404,
            code: "NoSuchBucket".into(),
            message: String::new()
        }));
    }
}
