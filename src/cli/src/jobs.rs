//! `invalidate`, `prewarm`, `jobs`: cluster-wide cache management through the admin API
//! (`/api/v1/invalidate`, `/api/v1/jobs`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::conn::{Common, Conn};
use crate::error::CliError;
use crate::util::{bytes, print_json, table};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("scope").args(["key", "bucket", "prefix"]).multiple(true).required(true)))]
pub struct InvalidateArgs {
    #[command(flatten)]
    pub c: Common,
    /// One key to drop: a native id, or with --bucket a key of that bucket.
    #[arg(conflicts_with = "prefix")]
    pub key: Option<String>,
    /// A bucket of the S3 API (alone: the whole bucket).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Drop every key under this prefix (of --bucket, else native ids).
    #[arg(long)]
    pub prefix: Option<String>,
}

pub fn invalidate(a: InvalidateArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let q: Vec<(&str, &str)> = [
        ("bucket", &a.bucket),
        ("key", &a.key),
        ("prefix", &a.prefix),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v.as_deref()?)))
    .collect();
    let v = conn.call_json("invalidate", conn.post("/api/v1/invalidate").query(&q))?;
    let failed = v["failed_nodes"].as_array().cloned().unwrap_or_default();
    if conn.json {
        print_json(&v);
    } else {
        println!(
            "dropped {} cached object(s) on {} node(s)",
            v["dropped"], v["nodes"]
        );
        if let Some(p) = v["pending"].as_array().filter(|p| !p.is_empty()) {
            println!(
                "kept {} object(s) whose writes are not in S3 yet: {}",
                p.len(),
                Value::Array(p.clone())
            );
        }
    }
    if !failed.is_empty() {
        let nodes: Vec<String> = failed
            .iter()
            .map(|f| match (f["node"].as_str(), f["error"].as_str()) {
                (Some(n), Some(e)) => format!("{n} ({e})"),
                _ => f.to_string(),
            })
            .collect();
        return Err(CliError::Partial(format!(
            "invalidate: {} node(s) could not be reached and may still serve the old copy: {}; retry",
            failed.len(),
            nodes.join(", ")
        )));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PrewarmArgs {
    #[command(flatten)]
    pub c: Common,
    /// Bucket of the S3 API.
    pub bucket: String,
    /// Read every key under this prefix [default: the whole bucket]
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Follow the job with a progress display until it ends.
    #[arg(long)]
    pub wait: bool,
}

pub fn prewarm(a: PrewarmArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let job = conn.call_json(
        "prewarm",
        conn.post("/api/v1/jobs/prewarm")
            .query(&[("bucket", &a.bucket), ("prefix", &a.prefix)]),
    )?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    if a.wait {
        return follow(&conn, &id);
    }
    if conn.json {
        print_json(&job);
    } else {
        println!("{id}");
        eprintln!("prewarm job started; follow it with: nearcache jobs {id} --wait");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub c: Common,
    /// A job id: show it (all jobs without one).
    pub id: Option<String>,
    /// Follow the job with a progress display until it ends.
    #[arg(long, requires = "id")]
    pub wait: bool,
    /// Cancel the job.
    #[arg(long, requires = "id", conflicts_with = "wait")]
    pub cancel: bool,
}

pub fn jobs(a: JobsArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let Some(id) = a.id else {
        let v = conn.call_json("jobs", conn.get("/api/v1/jobs"))?;
        if conn.json {
            print_json(&v);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v["jobs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(row)
            .collect();
        println!("{}", table(HEADER, &rows));
        return Ok(());
    };
    let path = format!("/api/v1/jobs/{id}");
    if a.cancel {
        let v = conn.call_json(&format!("cancel job {id}"), conn.delete(&path))?;
        if conn.json {
            print_json(&v);
        } else {
            println!("job {id}: {}", v["state"].as_str().unwrap_or("cancelled"));
        }
        return Ok(());
    }
    if a.wait {
        return follow(&conn, &id);
    }
    let v = conn.call_json(&format!("job {id}"), conn.get(&path))?;
    if conn.json {
        print_json(&v);
    } else {
        println!("{}", table(HEADER, &[row(&v)]));
        if let Some(e) = v["error"].as_str() {
            println!("error: {e}");
        }
    }
    Ok(())
}

const HEADER: &[&str] = &[
    "ID", "KIND", "BUCKET", "PREFIX", "STATE", "LISTED", "FETCHED", "SKIPPED", "DELETED", "BYTES",
    "ERRORS", "RATE", "ETA",
];

fn row(j: &Value) -> Vec<String> {
    let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| j[k].as_u64().unwrap_or(0).to_string();
    vec![
        s("id"),
        s("kind"),
        s("bucket"),
        s("prefix"),
        s("state"),
        n("listed"),
        n("fetched"),
        n("skipped"),
        n("deleted"),
        bytes(j["bytes"].as_u64().unwrap_or(0)),
        n("errors"),
        format!(
            "{:.0}/s {}/s",
            j["rate_objects_per_sec"].as_f64().unwrap_or(0.0),
            bytes(j["rate_bytes_per_sec"].as_f64().unwrap_or(0.0) as u64)
        ),
        j["eta_secs"]
            .as_f64()
            .map_or("-".into(), |e| format!("{e:.0}s")),
    ]
}

/// A job is over once it has a finish time.
fn finished(j: &Value) -> bool {
    !j["finished_unix_ms"].is_null()
}

/// Polls a job until it ends, with a progress bar on a terminal; the job's last state is
/// printed (`--json`: as JSON). A job that ended with an error exits with code 5.
fn follow(conn: &Conn, id: &str) -> Result<(), CliError> {
    let path = format!("/api/v1/jobs/{id}");
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(st) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} objects") {
        pb.set_style(st.progress_chars("=> "));
    }
    let mut last_change = Instant::now();
    let mut last = Value::Null;
    let v = loop {
        let v = conn.call_json(&format!("job {id}"), conn.get(&path))?;
        let done = ["fetched", "skipped", "deleted", "errors"]
            .iter()
            .map(|k| v[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
        pb.set_length(v["listed"].as_u64().unwrap_or(0).max(done));
        pb.set_position(done);
        pb.set_message(format!(
            "{} {} ({}/s)",
            v["kind"].as_str().unwrap_or("job"),
            v["state"].as_str().unwrap_or("?"),
            bytes(v["rate_bytes_per_sec"].as_f64().unwrap_or(0.0) as u64)
        ));
        if finished(&v) {
            break v;
        }
        if v != last {
            last = v.clone();
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(600) {
            pb.finish_and_clear();
            return Err(CliError::Partial(format!(
                "job {id} made no progress for 10 minutes (state {}); still running",
                v["state"]
            )));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    pb.finish_and_clear();
    if conn.json {
        print_json(&v);
    } else {
        println!("{}", table(HEADER, &[row(&v)]));
    }
    match v["error"].as_str() {
        Some(e) => Err(CliError::Partial(format!("job {id} failed: {e}"))),
        None => Ok(()),
    }
}
