//! Lints that keep whole classes of bugs out, enforced here because `cargo test` is what
//! CI runs: no blocking file system calls on shard threads (clippy `disallowed-methods`,
//! see clippy.toml; code that runs elsewhere says why with an `expect`), no `unsafe`
//! block without a `// SAFETY:` note, and the no-panic lints of the parser crate.
//! Libraries and binaries only: tests may block and unwrap.

use std::process::Command;

#[test]
fn clippy_finds_no_forbidden_call() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "clippy",
            "--workspace",
            "--lib",
            "--bins",
            "--quiet",
            "--",
            "-D",
            "clippy::disallowed_methods",
            "-D",
            "clippy::undocumented_unsafe_blocks",
            "-D",
            "unfulfilled_lint_expectations",
        ])
        .output()
        .expect("running cargo clippy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("no such command") {
        panic!("clippy is not installed: rustup component add clippy\n{stderr}");
    }
    assert!(out.status.success(), "cargo clippy found:\n{stderr}");
}
