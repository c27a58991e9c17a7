//! Engine benchmark: drives one [`Shard`] in-process (no HTTP) on a monoio runtime,
//! once per disk device (io_uring and plain syscalls), and prints a markdown table.
//!
//! ```text
//! cargo run --release -p nearcache-bench --bin engine -- \
//!     [--size 4KiB] [--objects 20000] [--concurrency 32] [--runs 3] \
//!     [--hot-passes 5] [--device uring|syscall|both] [--dir PATH]
//! ```
//!
//! Phases, each run in a fresh shard directory:
//! 1. write: `objects` objects of `size` bytes at level 0, `concurrency` tasks in
//!    flight; each write is `begin_write` + one `write` + `finish` (data fdatasync'ed
//!    and the journal record group-committed before it returns);
//! 2. reopen: `Shard::open` on the written directory (index rebuilt from LMDB, orphan
//!    scan of the object directories): the recovery time of `objects` objects;
//! 3. cold read: `lookup` + `read_all` of every object with the memory tier off
//!    (`memory_capacity` 0), so every read goes to the object file (O_DIRECT);
//! 4. hot read: the shard is reopened with a memory tier large enough for all objects,
//!    every object is read once to admit it (not timed), then `hot-passes` passes of
//!    `lookup` + `read_all` are served from memory.
//!
//! Every number is the median over `runs` runs; the ops/s range shows the spread.
//! CPU µs/op is the process's user+system time (shard thread and the journal's writer
//! thread) over the phase, divided by its operations.
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    reason = "a tool: no shard threads here, blocking file calls are fine"
)]

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use bytesize::ByteSize;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use nearcache_bench::today_utc;
use nearcache_shards::{defaults, DeviceKind, Lookup, Shard, ShardConfig, WriteAttrs};

#[derive(Parser, Debug)]
#[command(about = "Shard engine benchmark: write, reopen, cold and hot reads per device")]
struct Args {
    /// Object size (4096, 4KiB, 1MiB, ...).
    #[arg(long, default_value = "4KiB")]
    size: ByteSize,
    /// Objects written and read per run.
    #[arg(long, default_value_t = 20_000)]
    objects: u64,
    /// Tasks in flight per phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Runs per device; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Passes over all objects in the hot-read phase.
    #[arg(long, default_value_t = 5)]
    hot_passes: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Both)]
    device: DeviceArg,
    /// Parent directory for the shard directories (default: the system temp dir).
    /// Must be on a real disk: tmpfs refuses O_DIRECT and measures memory instead.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Uring,
    Syscall,
    Both,
}

/// What one phase of one run measured.
struct Phase {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    cpu: Duration,
    /// Per-operation latency in nanoseconds.
    hist: Histogram<u64>,
}

impl Phase {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
    fn p_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }
    fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops as f64
    }
}

struct Run {
    write: Phase,
    reopen: Duration,
    reopen_cpu: Duration,
    cold: Phase,
    hot: Phase,
}

/// User + system CPU time of the whole process (all threads), from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos((ticks(11) + ticks(12)) * 1_000_000_000 / hz)
}

/// Filesystem type name of `path`, to warn about tmpfs (no O_DIRECT, measures RAM).
#[allow(
    clippy::useless_conversion,
    reason = "the width of f_type differs between targets"
)]
fn fs_type(path: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(path) else {
        return "unknown".into();
    };
    match i64::from(st.f_type) {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("0x{other:x}"),
    }
}

/// `4 KiB`, `1 MiB`, or plain bytes when not a whole number of either.
fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn key(i: u64) -> String {
    format!("bench/{i:010}")
}

/// Runs `op(i)` for every `i` in `0..n` with `c` tasks in flight; `op` returns the
/// bytes it moved. Records each operation's latency.
async fn drive<F, Fut>(n: u64, c: usize, op: F) -> Result<Phase>
where
    F: Fn(u64) -> Fut + 'static,
    Fut: Future<Output = Result<u64>> + 'static,
{
    let op = Rc::new(op);
    let next = Rc::new(Cell::new(0u64));
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds"),
    ));
    let bytes = Rc::new(Cell::new(0u64));
    let cpu0 = process_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..c.max(1))
        .map(|_| {
            let (op, next, hist, bytes) = (op.clone(), next.clone(), hist.clone(), bytes.clone());
            monoio::spawn(async move {
                loop {
                    let i = next.get();
                    if i >= n {
                        return Ok::<(), anyhow::Error>(());
                    }
                    next.set(i + 1);
                    let t = Instant::now();
                    let moved = op(i).await?;
                    let ns = t.elapsed().as_nanos() as u64;
                    hist.borrow_mut().saturating_record(ns.max(1));
                    bytes.set(bytes.get() + moved);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    let hist = Rc::try_unwrap(hist)
        .map_err(|_| anyhow::anyhow!("histogram still shared"))?
        .into_inner();
    Ok(Phase {
        ops: n,
        bytes: bytes.get(),
        elapsed,
        cpu,
        hist,
    })
}

async fn open(cfg: &ShardConfig) -> Result<Rc<Shard>> {
    let (shard, _) = Shard::open(cfg.clone())
        .await
        .with_context(|| format!("opening the shard in {}", cfg.dir.display()))?;
    Ok(Rc::new(shard))
}

async fn close(shard: Rc<Shard>) -> Result<()> {
    shard.close().await.context("closing the shard")?;
    // The journal's writer thread is joined on drop, so the LMDB env can be reopened.
    drop(Rc::try_unwrap(shard).map_err(|_| anyhow::anyhow!("shard still shared"))?);
    Ok(())
}

async fn run_once(args: &Args, device: DeviceKind, dir: &Path) -> Result<Run> {
    let size = args.size.as_u64();
    let n = args.objects;
    let c = args.concurrency;
    let total = size * n;
    let mut cfg = ShardConfig {
        shard_id: 0,
        dir: dir.to_owned(),
        memory_capacity: 0,
        memory_object_max: size.max(defaults::MEMORY_OBJECT_MAX),
        disk_capacity: total * 2 + (1 << 30),
        tombstone_ttl: Duration::from_secs(defaults::TOMBSTONE_TTL_SECS),
        device,
        lmdb_map_size: 16 << 30,
        journal_retain: defaults::JOURNAL_RETAIN,
        inline_object_max: defaults::INLINE_OBJECT_MAX,
        meta_cache_objects: defaults::META_CACHE_OBJECTS,
    };
    let payload = Bytes::from(
        (0..size)
            .map(|i| (i.wrapping_mul(131) ^ (i >> 7)) as u8)
            .collect::<Vec<u8>>(),
    );

    // 1. Write.
    let shard = open(&cfg).await?;
    let write = {
        let shard = shard.clone();
        drive(n, c, move |i| {
            let (shard, payload) = (shard.clone(), payload.clone());
            async move {
                let mut w = shard.begin_write(&key(i), Some(size)).await?;
                w.write(payload).await?;
                w.finish(WriteAttrs {
                    level: 0,
                    ..Default::default()
                })
                .await?;
                Ok(size)
            }
        })
        .await?
    };
    close(shard).await?;

    // 2. Reopen (recovery), memory tier off for the cold reads.
    let cpu0 = process_cpu();
    let t = Instant::now();
    let (shard, report) = Shard::open(cfg.clone()).await.context("reopening")?;
    let reopen = t.elapsed();
    let reopen_cpu = process_cpu().saturating_sub(cpu0);
    ensure!(
        report.objects == n,
        "recovered {} objects, wrote {n}",
        report.objects
    );
    let shard = Rc::new(shard);

    // 3. Cold reads from the object files.
    let cold = {
        let shard = shard.clone();
        drive(n, c, move |i| {
            let shard = shard.clone();
            async move {
                let Lookup::Hit { meta, body } = shard.lookup(&key(i)) else {
                    bail!("{} missing", key(i));
                };
                ensure!(body.is_none(), "memory tier is off, yet a body was cached");
                let b = shard.read_all(&meta).await?;
                ensure!(b.len() as u64 == size, "short read of {}", key(i));
                Ok(size)
            }
        })
        .await?
    };
    close(shard).await?;

    // 4. Hot reads from the memory tier.
    cfg.memory_capacity = total + (64 << 20);
    let shard = open(&cfg).await?;
    for i in 0..n {
        let Lookup::Hit { meta, .. } = shard.lookup(&key(i)) else {
            bail!("{} missing", key(i));
        };
        shard.read_all(&meta).await?;
    }
    let hot = {
        let shard = shard.clone();
        let passes = args.hot_passes.max(1);
        drive(n * passes, c, move |j| {
            let shard = shard.clone();
            async move {
                let i = j % n;
                let Lookup::Hit { meta, body } = shard.lookup(&key(i)) else {
                    bail!("{} missing", key(i));
                };
                ensure!(body.is_some(), "{} not in the memory tier", key(i));
                let b = shard.read_all(&meta).await?;
                Ok(b.len() as u64)
            }
        })
        .await?
    };
    close(shard).await?;

    Ok(Run {
        write,
        reopen,
        reopen_cpu,
        cold,
        hot,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn phase_row(out: &mut String, name: &str, phases: &[&Phase]) {
    let med = |f: &dyn Fn(&Phase) -> f64| median(phases.iter().map(|p| f(p)).collect());
    let ops: Vec<f64> = phases.iter().map(|p| p.ops_per_sec()).collect();
    let (lo, hi) = range(&ops);
    let _ = writeln!(
        out,
        "| {name} | {:.0} | {:.0}–{:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
        median(ops.clone()),
        lo,
        hi,
        med(&Phase::mb_per_sec),
        med(&|p| p.p_us(0.5)),
        med(&|p| p.p_us(0.99)),
        med(&Phase::cpu_us_per_op),
    );
}

fn table(args: &Args, device: &str, runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {device}: {} × {}, concurrency {}, {} runs\n",
        args.objects,
        size_label(args.size.as_u64()),
        args.concurrency,
        runs.len()
    );
    let _ = writeln!(
        out,
        "| phase | ops/s (median) | ops/s (min–max) | MB/s | p50 µs | p99 µs | CPU µs/op |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    phase_row(
        &mut out,
        "write (level 0, fdatasync + journal commit)",
        &runs.iter().map(|r| &r.write).collect::<Vec<_>>(),
    );
    phase_row(
        &mut out,
        "cold read (disk, O_DIRECT)",
        &runs.iter().map(|r| &r.cold).collect::<Vec<_>>(),
    );
    phase_row(
        &mut out,
        &format!("hot read (memory tier, {} passes)", args.hot_passes.max(1)),
        &runs.iter().map(|r| &r.hot).collect::<Vec<_>>(),
    );
    let ms: Vec<f64> = runs.iter().map(|r| r.reopen.as_secs_f64() * 1e3).collect();
    let cpu_ms: Vec<f64> = runs
        .iter()
        .map(|r| r.reopen_cpu.as_secs_f64() * 1e3)
        .collect();
    let (lo, hi) = range(&ms);
    let _ = writeln!(
        out,
        "\nReopen (recovery of {} objects): median {:.1} ms (min–max {:.1}–{:.1}), \
         {:.0} objects/s, CPU {:.1} ms.\n",
        args.objects,
        median(ms.clone()),
        lo,
        hi,
        args.objects as f64 / (median(ms) / 1e3),
        median(cpu_ms),
    );
    out
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.objects > 0, "--objects must be at least 1");
    ensure!(args.runs > 0, "--runs must be at least 1");
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = tempfile::Builder::new()
        .prefix("nearcache-engine-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
    let fs = fs_type(base.path());
    if fs == "tmpfs" {
        eprintln!(
            "warning: {} is on tmpfs: no O_DIRECT, the disk numbers measure memory",
            base.path().display()
        );
    }
    let devices: Vec<(&str, DeviceKind)> = match args.device {
        DeviceArg::Uring => vec![("io_uring", DeviceKind::Uring)],
        DeviceArg::Syscall => vec![("syscall", DeviceKind::Syscall)],
        DeviceArg::Both => vec![
            ("io_uring", DeviceKind::Uring),
            ("syscall", DeviceKind::Syscall),
        ],
    };

    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .context("building the monoio runtime")?;
    let uring = monoio::utils::detect_uring();
    println!(
        "<!-- engine {} -->",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!(
        "Engine bench, {}: {} objects × {}, concurrency {}, {} runs per device; \
         dir {} ({fs}); io_uring available: {uring}.\n",
        today_utc(),
        args.objects,
        size_label(args.size.as_u64()),
        args.concurrency,
        args.runs,
        base.path().display()
    );
    for (name, kind) in devices {
        let mut runs = Vec::new();
        for r in 0..args.runs {
            let dir = base.path().join(format!("{name}-{r}"));
            let run = rt
                .block_on(run_once(&args, kind, &dir))
                .with_context(|| format!("{name} run {r}"))?;
            eprintln!(
                "{name} run {r}: write {:.0}/s, cold {:.0}/s, hot {:.0}/s, reopen {:.1} ms",
                run.write.ops_per_sec(),
                run.cold.ops_per_sec(),
                run.hot.ops_per_sec(),
                run.reopen.as_secs_f64() * 1e3
            );
            runs.push(run);
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        print!("{}", table(&args, name, &runs));
    }
    Ok(())
}
