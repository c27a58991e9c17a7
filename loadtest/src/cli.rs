//! Command line (clap derive).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::target::Api;

#[derive(Debug, Parser)]
#[command(
    name = "nearcache-loadtest",
    version,
    about = "Thread-per-core HTTP load generator and answer checker for nearcache"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// PUT deterministic objects and write the manifest (keys, sizes, MD5s).
    Seed(SeedArgs),
    /// Hot reads over the manifest's keys.
    Get(GetArgs),
    /// Reads and overwrites (same content) over the manifest's keys.
    Mixed(MixedArgs),
    /// Many concurrent GETs of a few cold keys at once: checks miss coalescing.
    MissStorm(StormArgs),
    /// Uploads of fresh objects at a consistency level.
    Put(PutArgs),
}

/// Options every scenario has.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server URL, e.g. http://127.0.0.1:8080 (repeatable; connections round-robin).
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// Worker threads, each with its own single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connections in total [default: 32; miss-storm: enough for clients × keys].
    #[arg(long)]
    pub connections: Option<usize>,
    /// HTTP/2 with prior knowledge (h2c).
    #[arg(long)]
    pub http2: bool,
    /// Concurrent requests per HTTP/2 connection.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// How long to measure, after the warmup (e.g. 10s, 500ms, 2m) [default: 10s].
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Stop after this many requests (after the warmup) instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Load before measuring, not recorded.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Open loop at this total rate (req/s), latency from the intended send time.
    /// Without it: closed loop, each slot sends as soon as its previous answer is in.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Per-request limit (connect, head and body).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// API the objects are written and read through.
    #[arg(long, value_enum, default_value_t = Api::Native)]
    pub api: Api,
    /// Bucket for --api s3.
    #[arg(long, default_value = "")]
    pub bucket: String,
    /// Key prefix for s3/plain keys (seed; later runs take keys from the manifest).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// GET path (and s3/plain PUT path): variables {key} {id} {size} {bucket}, e.g.
    /// /objects/{key} [default: native /api/v1/get/{id}, s3 /{bucket}/{key}, plain /{key}].
    #[arg(long)]
    pub path_template: Option<String>,
    /// Manifest file written by `seed` and read by the others.
    #[arg(long, default_value = "loadtest-manifest.json")]
    pub manifest: PathBuf,
    /// Fraction of GET bodies whose MD5 is checked (lengths are always checked).
    #[arg(long, default_value_t = 0.01)]
    pub verify_sample: f64,
    /// Scrape <target>/metrics before and after and print the counters' deltas.
    #[arg(long)]
    pub metrics: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Exit with status 1 if any request failed.
    #[arg(long)]
    pub fail_on_error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DistArg {
    Uniform,
    Zipf,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Objects per size: one number for every size, or one per --size entry (2000,200).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub objects: Vec<u64>,
    /// Object sizes (repeatable or a list: 4KiB,64KiB,1MiB).
    #[arg(long = "size", value_delimiter = ',', value_parser = parse_size, default_value = "4KiB")]
    pub sizes: Vec<u64>,
    /// Seed of ids and contents.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// X-Meta-ConsistencyLevel (native) [default: the server's].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub level: Option<u8>,
}

#[derive(Debug, Args)]
pub struct KeyChoice {
    /// Key popularity.
    #[arg(long, value_enum, default_value_t = DistArg::Uniform)]
    pub dist: DistArg,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Only manifest objects of these sizes.
    #[arg(long = "size", value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<u64>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub keys: KeyChoice,
}

#[derive(Debug, Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub keys: KeyChoice,
    /// Fraction of reads; the rest overwrite manifest keys with the same content.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// X-Meta-ConsistencyLevel of the writes (native).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub level: Option<u8>,
}

#[derive(Debug, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent requests per key.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Cold keys requested at once.
    #[arg(long, default_value_t = 16)]
    pub keys: usize,
    /// Skip this many manifest objects (so repeated storms hit keys still cold).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Only manifest objects of these sizes.
    #[arg(long = "size", value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Fresh ids that exist nowhere: the correct answer is 404.
    #[arg(long)]
    pub fresh: bool,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub common: Common,
    /// X-Meta-ConsistencyLevel (native).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub level: Option<u8>,
    /// Object sizes, used in turn.
    #[arg(long = "size", value_delimiter = ',', value_parser = parse_size, default_value = "4KiB")]
    pub sizes: Vec<u64>,
    /// Seed of ids and contents [default: from the clock, so every run writes new ids].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `10s`, `500ms`, `2m`, `1h`, `250us`, or plain seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n = f64::from_str(num).map_err(|_| format!("invalid duration {s:?} (e.g. 10s, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `4KiB`, `1MiB`, `1000` (bytes), `64kb`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    bytesize::ByteSize::from_str(s.trim())
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?} (e.g. 4KiB, 1MiB): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10 parsecs").is_err());
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
    }

    #[test]
    fn size_lists_and_repeats_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "seed",
            "--target",
            "http://a:1",
            "--size",
            "4KiB,64KiB",
            "--size",
            "1MiB",
            "--objects",
            "10,20,30",
        ])
        .unwrap();
        let Command::Seed(a) = cli.command else {
            panic!("not seed")
        };
        assert_eq!(a.sizes, vec![4096, 65536, 1 << 20]);
        assert_eq!(a.objects, vec![10, 20, 30]);
        assert!(Cli::try_parse_from([
            "x",
            "get",
            "--target",
            "t",
            "--duration",
            "1s",
            "--requests",
            "5"
        ])
        .is_err());
    }
}
