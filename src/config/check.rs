//! `nearcache config check FILE`: parse a config file (unknown keys are errors with a
//! suggestion), apply env and flags as `serve` would, validate, and print the effective
//! config with the source of every value.

use std::path::Path;

use anyhow::{anyhow, Context};

use super::{Config, ServeArgs};

/// Parses a config file's text. An unknown key names its section and the closest known
/// key ("did you mean ...?").
pub fn parse(text: &str) -> anyhow::Result<Config> {
    toml::from_str::<Config>(text).map_err(|e| match suggestion(text, &e) {
        Some(hint) => anyhow!("{}\n{hint}", e.to_string().trim_end()),
        None => anyhow!("{}", e.to_string().trim_end()),
    })
}

/// "unknown field `x`, expected one of `a`, `b`" → "unknown key [section] x: did you
/// mean `a`?" (or the list of known keys when none is close).
fn suggestion(text: &str, e: &toml::de::Error) -> Option<String> {
    let msg = e.message();
    let rest = msg.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let section = e
        .span()
        .and_then(|s| text.get(..s.start))
        .and_then(|before| {
            before
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('['))
                .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .filter(|_| !known.contains(&"server"));
    let place = match &section {
        Some(s) => format!("[{s}] {unknown}"),
        None => format!("section [{unknown}]"),
    };
    let best = known
        .iter()
        .map(|k| (strsim::levenshtein(unknown, k), *k))
        .min()
        .filter(|(d, k)| *d <= (k.len() / 3).max(2) || k.contains(unknown) || unknown.contains(k));
    Some(match best {
        Some((_, k)) => format!("unknown key {place}: did you mean `{k}`?"),
        None => format!("unknown key {place}; known: {}", known.join(", ")),
    })
}

/// Where a value of the effective config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        }
    }
}

/// Flattens a config into (section, key) → value.
fn flat(cfg: &Config) -> anyhow::Result<Vec<(String, String, toml::Value)>> {
    let t = toml::Table::try_from(cfg).context("serializing the config")?;
    let mut out = Vec::new();
    for (section, v) in t {
        if let toml::Value::Table(inner) = v {
            for (k, v) in inner {
                out.push((section.clone(), k, v));
            }
        }
    }
    Ok(out)
}

fn lookup<'a>(
    rows: &'a [(String, String, toml::Value)],
    section: &str,
    key: &str,
) -> Option<&'a toml::Value> {
    rows.iter()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v)
}

/// The effective config of `file` with `args` (flags and env, as `serve` reads them),
/// each value's source, as TOML with a comment per line. Errors say what is wrong.
#[expect(
    clippy::disallowed_methods,
    reason = "a command-line tool, on the main thread"
)]
pub fn check(file: &Path, args: &ServeArgs) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading config file {}", file.display()))?;
    let raw: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let from_file = parse(&text).with_context(|| format!("checking {}", file.display()))?;
    // Env and flags, told apart: the same flags parsed from no command line give what
    // the environment alone sets.
    #[derive(clap::Parser)]
    struct EnvOnly {
        #[command(flatten)]
        args: ServeArgs,
    }
    let env_args = <EnvOnly as clap::Parser>::try_parse_from(["nearcache"])
        .map_err(|e| anyhow!("reading NEARCACHE_* variables: {e}"))?
        .args;
    let mut with_aws = from_file.clone();
    with_aws.apply_aws_env();
    let mut with_env = with_aws.clone();
    with_env.apply_args(&env_args);
    let mut effective = with_aws.clone();
    effective.apply_args(args);
    effective
        .validate()
        .with_context(|| format!("checking {} with env and flags", file.display()))?;

    let (f_file, f_aws, f_env, f_eff) = (
        flat(&from_file)?,
        flat(&with_aws)?,
        flat(&with_env)?,
        flat(&effective)?,
    );
    let in_file = |s: &str, k: &str| raw.get(s).and_then(|t| t.get(k)).is_some();
    let mut out = format!(
        "# {} is valid. Effective config, each value's source after it:\n",
        file.display()
    );
    let mut section = String::new();
    for (s, k, v) in &f_eff {
        let src = if lookup(&f_env, s, k) != Some(v) {
            Source::Flag
        } else if lookup(&f_aws, s, k) != Some(v) || lookup(&f_file, s, k) != Some(v) {
            Source::Env
        } else if in_file(s, k) {
            Source::File
        } else {
            Source::Default
        };
        if *s != section {
            out.push_str(&format!("\n[{s}]\n"));
            section = s.clone();
        }
        out.push_str(&format!("{k} = {}  # {}\n", redact(k, v), src.as_str()));
    }
    Ok(out)
}

/// Secrets are shown as set, never printed.
fn redact(key: &str, v: &toml::Value) -> String {
    let hide = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            "<redacted>".into()
        }
    };
    match v {
        toml::Value::String(s) if key.contains("secret") => format!("{:?}", hide(s)),
        toml::Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::Table(t) => {
                        let fields: Vec<String> = t
                            .iter()
                            .map(|(k, v)| format!("{k} = {}", redact(k, v)))
                            .collect();
                        format!("{{ {} }}", fields.join(", "))
                    }
                    other => other.to_string(),
                })
                .collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_get_a_suggestion() {
        let e = parse("[server]\nlisten_adr = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key [server] listen_adr: did you mean `listen`?"),
            "{e}"
        );
        let e = parse("[sever]\nlisten = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("section [sever]: did you mean `server`?"), "{e}");
        let e = parse("[store]\nzzzzzzzzzzzz = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("known: memory_capacity"), "{e}");
        assert!(parse("[server]\nshards = 2\n").is_ok());
    }

    /// Fuzz target (bolero): any config text, valid TOML with misspelt keys included,
    /// is accepted or refused with a message, never a panic; an unknown key always gets
    /// a hint.
    #[test]
    fn fuzz_config_text_never_panics() {
        const SAMPLE: &str = include_str!("../../deploy/nearcache.toml");
        bolero::check!()
            .with_iterations(2000)
            .with_max_len(256)
            .for_each(|input: &[u8]| {
                let text = String::from_utf8_lossy(input);
                let _ = parse(&text);
                // A key of the sample with the input spliced into its name.
                let line = SAMPLE
                    .lines()
                    .filter(|l| !l.starts_with('#') && l.contains(" = "))
                    .nth(usize::from(input.first().copied().unwrap_or(0)) % 40)
                    .unwrap_or("listen = 1");
                let section = SAMPLE
                    .lines()
                    .take_while(|l| *l != line)
                    .filter(|l| l.starts_with('['))
                    .last()
                    .unwrap_or("[server]");
                let word: String = text
                    .chars()
                    .filter(|c| c.is_ascii_lowercase() || *c == '_')
                    .take(12)
                    .collect();
                let mangled = format!("{section}\n{word}{line}\n");
                if let Err(e) = parse(&mangled) {
                    let e = e.to_string();
                    if e.contains("unknown field") {
                        assert!(e.contains("unknown key"), "no hint: {e}");
                    }
                }
            });
    }

    #[test]
    fn sources_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("n.toml");
        std::fs::write(
            &f,
            "[server]\nshards = 3\n[[s3api.keys]]\naccess_key = \"a\"\nsecret_key = \"s3cr3t\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            disk_capacity: Some(crate::config::Size(1 << 30)),
            ..Default::default()
        };
        let out = check(&f, &args).unwrap();
        assert!(out.contains("shards = 3  # file"), "{out}");
        assert!(out.contains("disk_capacity = 1073741824  # flag"), "{out}");
        assert!(out.contains("pin_cores = true  # default"), "{out}");
        assert!(!out.contains("s3cr3t"), "secrets are not printed: {out}");
        // The output is itself a valid config (comments aside) once secrets are set.
        let parsed = parse(&out.replace("<redacted>", "x"));
        assert!(parsed.is_ok(), "{parsed:?}\n{out}");
    }
}
