//! `put`, `get`, `stat`, `rm`: objects through the native API.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use reqwest::blocking::Body;
use reqwest::Method;

use crate::conn::{Common, Conn};
use crate::error::CliError;
use crate::util::{bytes, print_json, progress};

#[derive(Debug, clap::Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub c: Common,
    /// File to store; `-` reads stdin.
    pub file: PathBuf,
    /// Object id (a ULID) [default: a new one]
    #[arg(long)]
    pub id: Option<String>,
    /// File name kept with the object; sets its Content-Type [default: the file's name]
    #[arg(long)]
    pub name: Option<String>,
    /// Content-Type (wins over the one the name implies).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Consistency level: 0 local only, 1 local + S3 in the background, 2 every node + S3
    /// [default: the node's api.default_level]
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub level: Option<u8>,
    /// Answer only once the object is in S3.
    #[arg(long)]
    pub sync: bool,
    /// User metadata KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub meta: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn put(a: PutArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let stdin = a.file.as_os_str() == "-";
    let name = a.name.clone().or_else(|| {
        (!stdin)
            .then(|| a.file.file_name().map(|n| n.to_string_lossy().into_owned()))
            .flatten()
    });
    let mut rb = conn.streaming(Method::POST, "/api/v1/put");
    if let Some(id) = &a.id {
        rb = rb.header("X-Meta-ID", id);
    }
    if let Some(n) = &name {
        rb = rb.header("X-Meta-Name", n);
    }
    if let Some(ct) = &a.content_type {
        rb = rb.header("Content-Type", ct);
    }
    if let Some(l) = a.level {
        rb = rb.header("X-Meta-ConsistencyLevel", l.to_string());
    }
    if a.sync {
        rb = rb.header("X-Meta-Sync", "1");
    }
    if !a.meta.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = a
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        rb = rb.header("X-Meta-UserMeta", serde_json::Value::Object(m).to_string());
    }
    let what = format!("put {}", a.file.display());
    let pb;
    let rb = if stdin {
        pb = progress(None, "put");
        rb.body(Body::new(pb.wrap_read(std::io::stdin())))
    } else {
        let f = std::fs::File::open(&a.file)
            .map_err(|e| CliError::other(format!("opening {}", a.file.display()), e))?;
        let len = f
            .metadata()
            .map_err(|e| CliError::other(format!("reading {}", a.file.display()), e))?
            .len();
        pb = progress(Some(len), "put");
        rb.body(Body::sized(pb.wrap_read(f), len))
    };
    let v = conn.call_json(&what, rb);
    pb.finish_and_clear();
    let v = v?;
    if conn.json {
        print_json(&v);
    } else {
        // The id alone on stdout (ID=$(nearcache put f) works); the rest for the human.
        println!("{}", v["id"].as_str().unwrap_or_default());
        eprintln!(
            "stored {} at level {}, etag {}{}",
            bytes(v["size"].as_u64().unwrap_or(0)),
            v["level"],
            v["etag"].as_str().unwrap_or("?"),
            if v["in_origin"].as_bool() == Some(true) {
                ", in S3"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub c: Common,
    /// Object id.
    pub id: String,
    /// Where to write the body: a file, or `-` for stdout.
    #[arg(short = 'o', long, default_value = "-")]
    pub output: String,
    /// Do not read through from S3 on a miss.
    #[arg(long)]
    pub no_fetch: bool,
}

pub fn get(a: GetArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let mut rb = conn.streaming(Method::GET, &format!("/api/v1/get/{}", a.id));
    if a.no_fetch {
        rb = rb.header("X-Meta-Fetch", "0");
    }
    let what = format!("get {}", a.id);
    let resp = conn.call(&what, rb)?;
    let len = resp.content_length();
    let pb = progress(len, "get");
    let result = if a.output == "-" {
        let out = std::io::stdout();
        let mut out = out.lock();
        copy_body(&conn, resp, &mut out, len, &pb, &what)
    } else {
        to_file(&conn, resp, Path::new(&a.output), len, &pb, &what)
    };
    pb.finish_and_clear();
    let n = result?;
    if conn.json {
        print_json(&serde_json::json!({ "id": a.id, "size": n, "output": a.output }));
    } else if a.output != "-" {
        eprintln!("wrote {} to {}", bytes(n), a.output);
    }
    Ok(())
}

/// Writes next to the target and renames once the whole body is there: a cut transfer
/// never leaves a file that looks complete.
fn to_file(
    conn: &Conn,
    resp: reqwest::blocking::Response,
    path: &Path,
    len: Option<u64>,
    pb: &indicatif::ProgressBar,
    what: &str,
) -> Result<u64, CliError> {
    let mut part = path.as_os_str().to_owned();
    part.push(".nearcache-part");
    let part = PathBuf::from(part);
    let mut f = std::fs::File::create(&part)
        .map_err(|e| CliError::other(format!("creating {}", part.display()), e))?;
    let done = copy_body(conn, resp, &mut f, len, pb, what).and_then(|n| {
        f.sync_all()
            .map_err(|e| CliError::other(format!("writing {}", part.display()), e))?;
        std::fs::rename(&part, path)
            .map_err(|e| CliError::other(format!("renaming to {}", path.display()), e))?;
        Ok(n)
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    done
}

fn copy_body(
    conn: &Conn,
    mut resp: reqwest::blocking::Response,
    out: &mut dyn Write,
    len: Option<u64>,
    pb: &indicatif::ProgressBar,
    what: &str,
) -> Result<u64, CliError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CliError::Partial(format!(
                    "{what}: the body was cut after {total} bytes ({e}); retry"
                )))
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| CliError::other("writing the body", e))?;
        total += n as u64;
        pb.inc(n as u64);
    }
    out.flush()
        .map_err(|e| CliError::other("writing the body", e))?;
    if let Some(want) = len {
        if total != want {
            return Err(CliError::Partial(format!(
                "{what}: got {total} of {want} bytes from {}; retry",
                conn.base
            )));
        }
    }
    Ok(total)
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    #[command(flatten)]
    pub c: Common,
    /// Object id.
    pub id: String,
    /// Do not read through from S3 on a miss.
    #[arg(long)]
    pub no_fetch: bool,
}

pub fn stat(a: StatArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let mut rb = conn.get(&format!("/api/v1/meta/{}", a.id));
    if a.no_fetch {
        rb = rb.header("X-Meta-Fetch", "0");
    }
    let v = conn.call_json(&format!("stat {}", a.id), rb)?;
    if conn.json {
        print_json(&v);
        return Ok(());
    }
    let size = v["size"].as_u64().unwrap_or(0);
    let mut rows = vec![
        ("id", v["id"].as_str().unwrap_or(&a.id).to_string()),
        ("size", format!("{} ({size} bytes)", bytes(size))),
    ];
    for k in [
        "etag",
        "name",
        "content_type",
        "last_modified",
        "level",
        "in_origin",
        "cached",
    ] {
        match &v[k] {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => rows.push((k, s.clone())),
            other => rows.push((k, other.to_string())),
        }
    }
    if let Some(m) = v["user_meta"].as_object().filter(|m| !m.is_empty()) {
        rows.push((
            "user_meta",
            serde_json::Value::Object(m.clone()).to_string(),
        ));
    }
    for (k, val) in rows {
        println!("{k:<14}{val}");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub c: Common,
    /// Object id.
    pub id: String,
    /// Consistency level of the delete (>= 1 deletes the S3 copy too).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub level: Option<u8>,
    /// Answer only once the delete reached S3.
    #[arg(long)]
    pub sync: bool,
}

pub fn rm(a: RmArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let mut rb = conn.post(&format!("/api/v1/delete/{}", a.id));
    if let Some(l) = a.level {
        rb = rb.header("X-Meta-ConsistencyLevel", l.to_string());
    }
    if a.sync {
        rb = rb.header("X-Meta-Sync", "1");
    }
    let v = conn.call_json(&format!("rm {}", a.id), rb)?;
    if conn.json {
        print_json(&v);
    } else {
        eprintln!("deleted {} (level {})", a.id, v["level"]);
    }
    Ok(())
}
