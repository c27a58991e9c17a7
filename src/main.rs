//! The `nearcache` binary.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use nearcache::config::{Config, ServeArgs};

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
}

fn main() {
    if let Err(e) = run() {
        eprintln!("nearcache: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => cli.serve,
    };
    let cfg = Config::load(&args)?;
    init_logging(&cfg.log.level)?;
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
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "config reload failed; keeping the running config"),
    }
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::try_new(level)
            .with_context(|| format!("invalid log level {level:?}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
