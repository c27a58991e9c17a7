//! The deploy/ files: the systemd unit passes `systemd-analyze verify` (and keeps a low
//! exposure score), install.sh stages a working layout, the sysctl file names real kernel
//! settings, and every metric the Grafana dashboard and the alert rules use is one a node
//! exports.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// systemd-analyze, installed from the OS packages when missing (tests run as root, as
/// they install moto with pip).
fn systemd_analyze() -> &'static str {
    let have = || {
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have() {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "systemd"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
            || (Command::new("apt-get")
                .args(["update", "-q"])
                .status()
                .is_ok()
                && Command::new("apt-get")
                    .args(["install", "-y", "-q", "systemd"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .is_ok_and(|s| s.success()));
        assert!(
            ok && have(),
            "systemd-analyze is missing and apt-get could not install systemd"
        );
    }
    "systemd-analyze"
}

/// The unit with ExecStart pointing at the binary under test (verify checks that the
/// command exists and is executable).
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(deploy("nearcache.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/nearcache serve"));
    let path = dir.join("nearcache.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/nearcache", env!("CARGO_BIN_EXE_nearcache")),
    )
    .unwrap();
    path
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let sa = systemd_analyze();
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let out = Command::new(sa).arg("verify").arg(&unit).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("nearcache.service"),
        "systemd-analyze verify warns about the unit:\n{stderr}"
    );

    let text = std::fs::read_to_string(&unit).unwrap();
    for directive in [
        "User=nearcache",
        "LimitNOFILE=",
        "LimitMEMLOCK=infinity",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=",
        "StateDirectory=nearcache",
        "io_uring_setup",
    ] {
        assert!(text.contains(directive), "the unit lacks {directive}");
    }
    // TimeoutStopSec must leave room for the default shutdown grace period.
    let stop: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(stop >= 3 * nearcache::config::defaults::SHUTDOWN_GRACE_SECS);

    // systemd's own exposure score: 0 (locked down) .. 10 (exposed).
    let out = Command::new(sa)
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let score: f64 = all
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for nearcache.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{all}"));
    assert!(score <= 2.5, "exposure {score}:\n{all}");
    println!("systemd exposure level of nearcache.service: {score}");
}

#[test]
fn install_script_stages_a_working_layout() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(deploy("install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_nearcache"), "--sysctl"])
        .env("DESTDIR", root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.path().join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/local/bin/nearcache"), 0o755);
    assert_eq!(mode("var/lib/nearcache"), 0o750);
    assert_eq!(
        mode("etc/nearcache/nearcache.toml"),
        0o640,
        "it holds secrets"
    );
    assert_eq!(mode("etc/systemd/system/nearcache.service"), 0o644);
    assert_eq!(mode("etc/sysctl.d/90-nearcache.conf"), 0o644);
    // The staged config is valid and keeps its data where the unit says.
    let conf = root.path().join("etc/nearcache/nearcache.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_nearcache"))
        .args(["config", "check"])
        .arg(&conf)
        .env_remove("NEARCACHE_DATA_DIR")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("data_dir = \"/var/lib/nearcache\"  # file"),
        "{text}"
    );
    // A second run keeps the edited config.
    std::fs::write(&conf, "[server]\nshards = 4\n").unwrap();
    let out = Command::new("bash")
        .arg(deploy("install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_nearcache")])
        .env("DESTDIR", root.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "[server]\nshards = 4\n"
    );
}

#[test]
fn sysctl_file_names_real_kernel_settings() {
    let text = std::fs::read_to_string(deploy("sysctl-nearcache.conf")).unwrap();
    let mut n = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap().trim();
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(path.exists(), "{key}: no {}", path.display());
        n += 1;
    }
    assert!(n >= 5);
}

/// `nearcache_*` names in a text, histogram suffixes folded into their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("nearcache_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        out.insert(name.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_and_alerts_use_metrics_a_node_exports() {
    let dash = std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dash).expect("the dashboard is JSON");
    assert!(v["panels"].as_array().unwrap().len() >= 10);
    let alerts = std::fs::read_to_string(deploy("nearcache-alerts.yml")).unwrap();

    let node = TestNode::start_with("deploy-metrics", |c| {
        c.cluster.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let id = new_id(&node);
    assert!(put(&node, &id, b"x".to_vec(), &[]).status().is_success());
    let text = node.metrics_text();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let used: BTreeSet<String> = metric_names(&dash)
        .union(&metric_names(&alerts))
        .cloned()
        .collect();
    assert!(used.len() >= 20, "{used:?}");
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported by a node: {missing:?}");
}
