//! Targets (`--target http://host:port[/base]`) and request paths (`--path-template`).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

/// Which HTTP API the objects are written and read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// nearcache's native API: POST /api/v1/put with X-Meta-ID, GET /api/v1/get/<id>.
    Native,
    /// Path-style S3, unsigned: PUT/GET /<bucket>/<key>.
    S3,
    /// Plain HTTP PUT/GET of <target>/<key>.
    Plain,
}

impl Api {
    /// Default template of the GET path.
    pub fn default_get_template(self) -> &'static str {
        match self {
            Api::Native => "/api/v1/get/{id}",
            Api::S3 => "/{bucket}/{key}",
            Api::Plain => "/{key}",
        }
    }
    /// Default template of the PUT path (native ignores `--path-template` for writes).
    pub fn default_put_template(self) -> &'static str {
        match self {
            Api::Native => "/api/v1/put",
            Api::S3 => "/{bucket}/{key}",
            Api::Plain => "/{key}",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Api::Native => "native",
            Api::S3 => "s3",
            Api::Plain => "plain",
        }
    }
}

/// One server to load. Only plain `http://` (HTTP/1.1 or h2c).
#[derive(Debug, Clone)]
pub struct Target {
    pub raw: String,
    pub scheme: Scheme,
    pub authority: Authority,
    pub host_header: HeaderValue,
    pub addrs: Vec<SocketAddr>,
    /// Path prefix of the target URL, without a trailing slash ("" for none).
    pub base_path: String,
}

impl Target {
    pub fn parse(raw: &str) -> anyhow::Result<Target> {
        let with_scheme = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        let uri: Uri = with_scheme
            .parse()
            .with_context(|| format!("parsing target URL {raw:?}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            bail!("target {raw:?}: only http:// is supported (TLS is a non-goal)");
        }
        let authority = uri
            .authority()
            .cloned()
            .with_context(|| format!("target {raw:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = (authority.host(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", authority.host()))?
            .collect();
        if addrs.is_empty() {
            bail!("target {raw:?} resolves to no address");
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Target {
            raw: raw.to_string(),
            scheme: Scheme::HTTP,
            host_header: HeaderValue::from_str(authority.as_str())?,
            authority,
            addrs,
            base_path,
        })
    }

    /// `http://host:port` + `path` (for scraping and messages).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}{}", self.authority, self.base_path, path)
    }
}

/// Variables of a path template.
pub struct PathVars<'a> {
    /// The object's key (prefix + id).
    pub key: &'a str,
    pub id: &'a str,
    pub size: u64,
    pub bucket: &'a str,
}

/// Checks a template: it starts with '/' and only uses known `{variables}`.
pub fn check_template(t: &str) -> anyhow::Result<()> {
    if !t.starts_with('/') {
        bail!("path template {t:?} must start with '/'");
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .with_context(|| format!("path template {t:?}: unclosed '{{'"))?;
        let name = &rest[open + 1..open + close];
        if !matches!(name, "key" | "id" | "size" | "bucket") {
            bail!(
                "path template {t:?}: unknown variable {{{name}}} (known: key, id, size, bucket)"
            );
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

/// Fills a template. Keys are inserted as they are: ids and generated keys are URL-safe.
pub fn render(template: &str, v: &PathVars<'_>) -> String {
    let mut out = String::with_capacity(template.len() + v.key.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        match &rest[open + 1..open + close] {
            "key" => out.push_str(v.key),
            "id" => out.push_str(v.id),
            "size" => out.push_str(&v.size.to_string()),
            "bucket" => out.push_str(v.bucket),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(key: &'a str, id: &'a str) -> PathVars<'a> {
        PathVars {
            key,
            id,
            size: 4096,
            bucket: "bench",
        }
    }

    #[test]
    fn templates_render() {
        let v = vars("lt/01ABC", "01ABC");
        assert_eq!(render("/api/v1/get/{id}", &v), "/api/v1/get/01ABC");
        assert_eq!(render("/{bucket}/{key}", &v), "/bench/lt/01ABC");
        assert_eq!(
            render("/objects/{size}/{key}.bin", &v),
            "/objects/4096/lt/01ABC.bin"
        );
        assert_eq!(render("/static", &v), "/static");
        assert_eq!(Api::S3.default_get_template(), "/{bucket}/{key}");
    }

    #[test]
    fn templates_are_checked() {
        assert!(check_template("/objects/{key}").is_ok());
        assert!(check_template("objects/{key}").is_err());
        assert!(check_template("/objects/{nope}").is_err());
        assert!(check_template("/objects/{key").is_err());
    }

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:18080/cache/").unwrap();
        assert_eq!(t.authority.as_str(), "127.0.0.1:18080");
        assert_eq!(t.base_path, "/cache");
        assert_eq!(t.addrs[0], "127.0.0.1:18080".parse().unwrap());
        assert_eq!(t.url("/metrics"), "http://127.0.0.1:18080/cache/metrics");
        let bare = Target::parse("127.0.0.1:80").unwrap();
        assert_eq!(bare.base_path, "");
        assert!(Target::parse("https://127.0.0.1:443").is_err());
    }
}
