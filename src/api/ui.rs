//! The status page every node serves at `/ui`: one static HTML page and one script,
//! embedded in the binary (no build step, no CDN), that read the node's JSON endpoints
//! (`/healthz`, `/api/v1/stats`, `/api/v1/cluster`, `/api/v1/history`, `/api/v1/jobs`)
//! and draw members, placement, plots, per-shard disk and memory, uploads, origin health
//! and jobs. Also the sampler that keeps the node's recent history for the plots.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Response, StatusCode};
use tokio::sync::watch;

use crate::body::{text, Body};
use crate::ctx::Node;
use crate::history::{Sample, INTERVAL};
use crate::metrics::Route;

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");

/// The page's paths.
pub fn serves(path: &str) -> bool {
    matches!(path, "/ui" | "/ui/" | "/ui/app.js")
}

/// `/ui` (the page) or `/ui/app.js` (its script). Everything the page loads comes from
/// this node, which the Content-Security-Policy says.
pub fn asset(path: &str) -> Response<Body> {
    let (ctype, body) = if path.ends_with(".js") {
        ("text/javascript; charset=utf-8", SCRIPT)
    } else {
        ("text/html; charset=utf-8", PAGE)
    };
    let mut resp = text(StatusCode::OK, ctype, body.to_string());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Requests that are the cache's work (not admin, metrics or the page itself).
fn is_object_route(r: Route) -> bool {
    matches!(
        r,
        Route::NewId
            | Route::Put
            | Route::Get
            | Route::Head
            | Route::Meta
            | Route::Delete
            | Route::S3Read
            | Route::S3Write
            | Route::S3List
            | Route::S3Other
    )
}

/// The whole node's counters now.
pub fn sample(node: &Node) -> Sample {
    let mut s = Sample {
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        ..Default::default()
    };
    for shard in &node.shards {
        let (n, buckets) = shard.http.totals(is_object_route);
        s.requests += n;
        if s.latency.is_empty() {
            s.latency = vec![0; buckets.len()];
        }
        for (a, b) in s.latency.iter_mut().zip(buckets) {
            *a += b;
        }
        let m = &shard.store;
        s.hits += m.hits.load(Relaxed);
        s.misses += m.misses.load(Relaxed);
        s.pending_uploads += m.pending_uploads.load(Relaxed);
        s.disk_bytes += m.disk_bytes.load(Relaxed);
        s.memory_bytes += m.memory_bytes.load(Relaxed);
    }
    let o = node.bridge.stats();
    s.origin_requests = [
        &o.requests_get,
        &o.requests_head,
        &o.requests_put,
        &o.requests_delete,
    ]
    .iter()
    .map(|c| c.load(Relaxed))
    .sum();
    s.origin_errors = o.errors.load(Relaxed);
    s
}

/// Samples the node every [`INTERVAL`] until shutdown (runs on shard 0).
pub async fn run_sampler(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        node.history.push(sample(&node));
        if *shutdown.borrow() {
            return;
        }
        monoio::select! {
            _ = monoio::time::sleep(INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_script() {
        assert!(PAGE.contains("<script src=\"/ui/app.js\"></script>"));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        let script = SCRIPT.replace("http://www.w3.org/2000/svg", "");
        assert!(!script.contains("http://") && !script.contains("https://"));
        assert!(
            !SCRIPT.contains("innerHTML"),
            "text goes in as text, never as markup"
        );
    }
}
