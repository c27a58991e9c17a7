//! The `nearcache-loadtest` binary: see the library docs ([`nearcache_loadtest`]) for
//! goals, non-goals and the thread model.
//!
//! Exit status: 0 on success, 1 on a setup error or (with `--fail-on-error`) when any
//! request failed.
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    reason = "a tool: no shard threads here, blocking file calls are fine"
)]

use clap::Parser;
use nearcache_loadtest::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let (json, fail_on_error) = match &cli.command {
        Command::Seed(a) => (a.common.json, a.common.fail_on_error),
        Command::Get(a) => (a.common.json, a.common.fail_on_error),
        Command::Mixed(a) => (a.common.json, a.common.fail_on_error),
        Command::MissStorm(a) => (a.common.json, a.common.fail_on_error),
        Command::Put(a) => (a.common.json, a.common.fail_on_error),
    };
    match nearcache_loadtest::run(cli) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render_table());
            }
            if fail_on_error && report.errors_total > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("nearcache-loadtest: error: {e:#}");
            std::process::exit(1);
        }
    }
}
