//! The `nearcache` binary: `serve` (the default) runs a node; `config check` validates a
//! config file; the client commands (`put`, `get`, `stat`, `rm`, `ls`, `cluster`,
//! `stats`, `top`, `invalidate`, `prewarm`, `jobs`, `drain`) live in `nearcache-cli`.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nearcache::config::{Config, ServeArgs};

/// mimalloc returns the memory of closed connections to the OS, where glibc's per-thread
/// arenas kept it (RSS stayed at its peak after a connection flood).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nearcache",
    version,
    about = "Multi-master, thread-per-core near-cache for S3"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve(ServeArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    #[command(flatten)]
    Client(nearcache_cli::Command),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and print the effective config with the source of each
    /// value (default, file, env, flag). Flags and NEARCACHE_* variables apply as for
    /// `serve`.
    Check {
        /// The TOML file to check.
        file: std::path::PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::Client(cmd)) => nearcache_cli::run(cmd),
        Some(Command::Config(ConfigCommand::Check { file, serve })) => {
            match nearcache::config::check::check(&file, &serve) {
                Ok(report) => {
                    print!("{report}");
                    0
                }
                Err(e) => {
                    eprintln!("nearcache: {e:#}");
                    nearcache_cli::exit::USAGE
                }
            }
        }
        Some(Command::Serve(a)) => serve(a),
        None => serve(cli.serve),
    };
    std::process::exit(code);
}

fn serve(args: ServeArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nearcache: error: {e:#}");
            1
        }
    }
}

fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args)?;
    init_logging(&cfg.log)?;
    // One dead core must not leave the others serving half a node.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!("panic: {info}; aborting the process");
        std::process::abort();
    }));
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let server = nearcache::start(cfg)?;
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            reload(&args, &server);
            continue;
        }
        tracing::info!(signal = sig, "shutting down");
        break;
    }
    server.shutdown().context("shutting down")?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: reads the config again and applies what can change while running: the
/// origin backends' maintenance switches. Anything else needs a restart.
fn reload(args: &nearcache::config::ServeArgs, server: &nearcache::ServerHandle) {
    match Config::load(args) {
        Ok(cfg) => {
            for b in &cfg.origin.backend {
                if !server.node.backends.set_maintenance(&b.name, b.maintenance) {
                    tracing::warn!(backend = %b.name, "config reload: unknown backend (adding one needs a restart)");
                }
            }
            tracing::info!("config reloaded (backend maintenance switches)");
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "config reload failed; keeping the running config")
        }
    }
}

/// Logs go to stderr: text (colours only on a terminal, so files and the journal get
/// none; never with NO_COLOR set) or one JSON object per line (`log.format = "json"`).
fn init_logging(log: &nearcache::config::LogConfig) -> anyhow::Result<()> {
    let level = &log.level;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::try_new(level)
            .with_context(|| format!("invalid log level {level:?}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format.as_str() {
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        _ => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
    Ok(())
}
