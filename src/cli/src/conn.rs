//! Where the node is and how to talk to it: `--server`, `NEARCACHE_SERVER`, or the
//! node's config file (`--config`, `NEARCACHE_CONFIG`, else /etc/nearcache/nearcache.toml).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};

use crate::error::CliError;

/// Where the packaged unit's config lives (deploy/install.sh puts it there).
const SYSTEM_CONFIG: &str = "/etc/nearcache/nearcache.toml";
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Node URL, e.g. http://10.0.0.5:8080 [default: the config file's server.listen, else
    /// http://127.0.0.1:8080]
    #[arg(long, env = "NEARCACHE_SERVER")]
    pub server: Option<String>,
    /// The node's TOML config file, to take its addresses (and S3 keys for `ls`) from
    /// [default: /etc/nearcache/nearcache.toml when it exists]
    #[arg(long, env = "NEARCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON for scripts instead of text for humans.
    #[arg(long)]
    pub json: bool,
    /// Timeout in seconds of requests without a large body.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// A bearer token (JWT) for a node started with --jwt-key; sent as
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, env = "NEARCACHE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The node's config file, read loosely: the CLI needs only its addresses and keys.
#[derive(Debug, Default)]
pub struct NodeConfig {
    pub listen: Option<String>,
    pub s3_listen: Option<String>,
    pub s3_key: Option<(String, String)>,
}

impl NodeConfig {
    fn load(common: &Common) -> Result<NodeConfig, CliError> {
        let (path, text) = match &common.config {
            Some(p) => (
                p.clone(),
                std::fs::read_to_string(p)
                    .map_err(|e| CliError::other(format!("reading {}", p.display()), e))?,
            ),
            // The system config is only a default: unreadable (mode 0640, other users)
            // or absent, the defaults apply.
            None => match std::fs::read_to_string(SYSTEM_CONFIG) {
                Ok(text) => (PathBuf::from(SYSTEM_CONFIG), text),
                Err(_) => return Ok(NodeConfig::default()),
            },
        };
        let t: toml::Table = toml::from_str(&text)
            .map_err(|e| CliError::other(format!("parsing {}", path.display()), e))?;
        let s = |section: &str, key: &str| t.get(section)?.get(key)?.as_str().map(str::to_string);
        let s3_key = t
            .get("s3api")
            .and_then(|s| s.get("keys"))
            .and_then(|k| k.as_array())
            .and_then(|a| a.first())
            .and_then(|k| {
                Some((
                    k.get("access_key")?.as_str()?.to_string(),
                    k.get("secret_key")?.as_str()?.to_string(),
                ))
            });
        Ok(NodeConfig {
            listen: s("server", "listen"),
            s3_listen: s("s3api", "listen"),
            s3_key,
        })
    }
}

/// `ip:port` a node listens on → a URL a client on this host can use (a wildcard
/// address means "every interface": loopback is one of them).
pub fn url_of_listen(addr: &str) -> String {
    let addr = addr
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{addr}")
}

/// A connection to one node.
pub struct Conn {
    pub base: String,
    pub json: bool,
    pub node_cfg: NodeConfig,
    client: Client,
    timeout: Duration,
}

impl Conn {
    pub fn new(common: &Common) -> Result<Conn, CliError> {
        let node_cfg = NodeConfig::load(common)?;
        let server = common.server.as_ref().filter(|s| !s.trim().is_empty());
        let base = match (server, &node_cfg.listen) {
            (Some(s), _) => s.clone(),
            (None, Some(l)) => url_of_listen(l),
            (None, None) => DEFAULT_SERVER.to_string(),
        };
        Self::to(&base, common, node_cfg)
    }

    /// A connection to `base` with `common`'s options (for commands that visit several
    /// nodes).
    pub fn to(base: &str, common: &Common, node_cfg: NodeConfig) -> Result<Conn, CliError> {
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        if !common.timeout.is_finite() || common.timeout <= 0.0 {
            return Err(CliError::Usage(
                "--timeout must be a positive number".into(),
            ));
        }
        // No overall timeout on the client: bodies of any size stream through it. Small
        // requests set their own.
        let mut builder = Client::builder()
            .timeout(None)
            .connect_timeout(Duration::from_secs(5));
        if let Some(token) = common
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    CliError::Usage("--token has characters a header cannot carry".into())
                })?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        let client = builder
            .build()
            .map_err(|e| CliError::other("building the HTTP client", e))?;
        Ok(Conn {
            base,
            json: common.json,
            node_cfg,
            client,
            timeout: Duration::from_secs_f64(common.timeout),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path)).timeout(self.timeout)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path)).timeout(self.timeout)
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path)).timeout(self.timeout)
    }

    /// A request that streams a body of any size: no overall timeout.
    pub fn streaming(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends `rb`; a non-2xx answer becomes a [`CliError`] saying `what` failed and why
    /// (the node's `{"error","detail"}` body).
    pub fn call(&self, what: &str, rb: RequestBuilder) -> Result<Response, CliError> {
        let req = rb
            .build()
            .map_err(|e| CliError::other(format!("{what}: building the request"), e))?;
        let route = format!("{} {}", req.method(), req.url().path());
        let resp = self.client.execute(req).map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let error = body["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_lowercase());
        let detail = body["detail"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                if body.is_null() {
                    text.trim().to_string()
                } else {
                    String::new()
                }
            });
        if status == reqwest::StatusCode::NOT_FOUND && detail.starts_with("no route for") {
            return Err(CliError::NoRoute {
                what: what.to_string(),
                route,
            });
        }
        Err(CliError::Status {
            what: what.to_string(),
            status: status.as_u16(),
            error,
            detail,
        })
    }

    /// [`Conn::call`] and parse the answer as JSON.
    pub fn call_json(&self, what: &str, rb: RequestBuilder) -> Result<serde_json::Value, CliError> {
        let resp = self.call(what, rb)?;
        let text = resp.text().map_err(|e| self.transport(e))?;
        serde_json::from_str(&text)
            .map_err(|e| CliError::other(format!("{what}: the node's answer is not JSON"), e))
    }

    pub fn transport(&self, e: reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() {
            let mut detail = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                detail = format!("{detail}: {s}");
                src = s.source();
            }
            CliError::Unreachable {
                url: self.base.clone(),
                detail,
            }
        } else {
            CliError::other(format!("talking to {}", self.base), e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_become_loopback_urls() {
        assert_eq!(url_of_listen("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(url_of_listen("[::]:8080"), "http://[::1]:8080");
        assert_eq!(url_of_listen("10.1.2.3:8080"), "http://10.1.2.3:8080");
    }
}
