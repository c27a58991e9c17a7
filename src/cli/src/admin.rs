//! `cluster`, `stats`, `drain`: the node's admin endpoints.

use std::time::{Duration, Instant};

use crate::conn::{Common, Conn};
use crate::error::CliError;
use crate::util::{bytes, print_json, table};

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub c: Common,
    /// Also show where this key (a native id, or `bucket/key`) is placed.
    #[arg(long)]
    pub key: Option<String>,
}

pub fn cluster(a: ClusterArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let mut rb = conn.get("/api/v1/cluster");
    if let Some(k) = &a.key {
        rb = rb.query(&[("key", k)]);
    }
    let v = conn.call_json("cluster", rb)?;
    if conn.json {
        print_json(&v);
        return Ok(());
    }
    println!(
        "node {} of cluster {:?} at {}; replication factor {}, write quorum {}, epoch {}",
        v["node_id"].as_str().unwrap_or("?"),
        v["cluster"].as_str().unwrap_or("?"),
        v["addr"].as_str().unwrap_or("?"),
        v["replication_factor"],
        v["write_quorum"],
        v["epoch"],
    );
    let sync = v["sync"].as_object().cloned().unwrap_or_default();
    let lag_of = |id: &str| -> Option<u64> {
        let p = sync.get(id)?;
        let last = p["peer_last_seq"].as_array()?;
        let applied = p["applied_seq"].as_array()?;
        Some(
            last.iter()
                .zip(applied)
                .map(|(l, a)| {
                    l.as_u64()
                        .unwrap_or(0)
                        .saturating_sub(a.as_u64().unwrap_or(0))
                })
                .sum(),
        )
    };
    let rows: Vec<Vec<String>> = v["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap_or("?");
            let me = m["is_self"].as_bool() == Some(true);
            vec![
                format!("{id}{}", if me { " *" } else { "" }),
                m["addr"].as_str().unwrap_or("?").to_string(),
                m["state"].as_str().unwrap_or("?").to_string(),
                m["generation"].to_string(),
                if me {
                    "-".into()
                } else {
                    lag_of(id).map_or("?".into(), |l| l.to_string())
                },
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["MEMBER", "ADDR", "STATE", "GENERATION", "SYNC LAG"],
            &rows
        )
    );
    if let Some(b) = v["blocked"].as_array().filter(|b| !b.is_empty()) {
        println!(
            "blocked (fault injection): {}",
            serde_json::Value::Array(b.clone())
        );
    }
    if let Some(k) = v.get("key") {
        let list = |f: &str| {
            k[f].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        println!(
            "key {}: owners {}; ranking {}",
            k["key"].as_str().unwrap_or("?"),
            list("owners"),
            list("ranking")
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub c: Common,
}

pub fn stats(a: StatsArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let v = conn.call_json("stats", conn.get("/api/v1/stats"))?;
    if conn.json {
        print_json(&v);
        return Ok(());
    }
    let n = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap_or(0);
    let ratio = |r: &serde_json::Value| {
        let (h, m) = (n(r, "hits"), n(r, "misses"));
        if h + m == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * h as f64 / (h + m) as f64)
        }
    };
    let row = |name: String, r: &serde_json::Value| {
        vec![
            name,
            n(r, "objects").to_string(),
            format!(
                "{} / {}",
                bytes(n(r, "bytes")),
                bytes(n(r, "capacity_bytes"))
            ),
            format!(
                "{} / {}",
                bytes(n(r, "memory_bytes")),
                bytes(n(r, "memory_capacity_bytes"))
            ),
            n(r, "hits").to_string(),
            n(r, "misses").to_string(),
            ratio(r),
            n(r, "evictions").to_string(),
            n(r, "pending_uploads").to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = v["shards"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| row(format!("shard {}", s["shard"]), s))
        .collect();
    rows.push(row("total".into(), &v["total"]));
    println!(
        "{}",
        table(
            &[
                "",
                "OBJECTS",
                "DISK",
                "MEMORY",
                "HITS",
                "MISSES",
                "HIT RATIO",
                "EVICTIONS",
                "PENDING UPLOADS"
            ],
            &rows
        )
    );
    let d = &v["disk"];
    if let (Some(t), Some(av)) = (
        d["filesystem_total_bytes"].as_u64(),
        d["filesystem_available_bytes"].as_u64(),
    ) {
        println!(
            "file system of {}: {} free of {}",
            d["data_dir"].as_str().unwrap_or("?"),
            bytes(av),
            bytes(t)
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub c: Common,
    /// Wait until the node has handed its keys over and left (bounded by --wait-secs).
    #[arg(long)]
    pub wait: bool,
    /// The longest --wait waits.
    #[arg(long, default_value_t = 600)]
    pub wait_secs: u64,
    /// Hand over every key the node owns (keeps caches warm), not only those not safe
    /// in S3.
    #[arg(long)]
    pub all: bool,
}

pub fn drain(a: DrainArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let mut rb = conn.post("/api/v1/drain");
    if a.all {
        rb = rb.query(&[("all", "true")]);
    }
    let mut v = conn.call_json("drain", rb)?;
    if a.wait {
        let deadline = Instant::now() + Duration::from_secs(a.wait_secs);
        while !matches!(v["state"].as_str(), Some("left") | Some("failed")) {
            if Instant::now() > deadline {
                return Err(CliError::Partial(format!(
                    "drain: still {} after {} s",
                    v["state"], a.wait_secs
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
            v = conn.call_json("drain status", conn.get("/api/v1/drain"))?;
            if !conn.json {
                eprint!(
                    "\r{}: {} of {} keys handed over   ",
                    v["state"].as_str().unwrap_or("?"),
                    v["handed_over"],
                    v["to_hand_over"]
                );
            }
        }
        if !conn.json {
            eprintln!();
        }
    }
    if conn.json {
        print_json(&v);
    } else {
        println!(
            "{}: {} of {} keys handed over{}",
            v["state"].as_str().unwrap_or("?"),
            v["handed_over"],
            v["to_hand_over"],
            v["error"]
                .as_str()
                .map(|e| format!("; {e}"))
                .unwrap_or_default()
        );
    }
    if v["state"] == "failed" {
        return Err(CliError::Partial(format!(
            "drain failed: {}",
            v["error"].as_str().unwrap_or("?")
        )));
    }
    Ok(())
}
