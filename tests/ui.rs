//! The status page (`/ui`) of a 3-node cluster of real node processes, loaded in a real
//! headless browser (Chromium from the OS packages, installed when missing): the DOM
//! shows the three members alive and plots with data; the screenshot is decoded and
//! checked to be a real rendering (the page's header colour, plot lines, not blank).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::procs::{cluster, get_json, wait_for};
use common::*;

/// Chromium from the OS packages; installed with apt-get when missing.
fn chromium() -> PathBuf {
    let find = || {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .map(|b| Path::new("/usr/bin").join(b))
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return p;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        install();
    }
    find().expect("chromium is missing and apt-get could not install it")
}

/// Runs headless Chromium on `url` with `args`, bounded in time; returns stdout.
fn run_chromium(bin: &Path, url: &str, args: &[String]) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1700",
            // Lets the page's fetches and a few refreshes run before the DOM or the
            // screenshot is taken.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

#[test]
fn status_page_shows_a_three_node_cluster_with_plots() {
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 3, &["--replication-factor", "2"], "");
    let base = nodes[0].base();
    let ids: Vec<String> = nodes.iter().map(|n| n.id()).collect();

    // Traffic on node 0 (writes, hits, a miss) until its history has plotted points.
    let mut written = Vec::new();
    let history = wait_for("history with traffic", Duration::from_secs(60), || {
        let id = client()
            .get(format!("{base}/api/v1/id"))
            .send()
            .ok()?
            .text()
            .ok()?;
        let r = client()
            .post(format!("{base}/api/v1/put"))
            .header("X-Meta-ID", &id)
            .header("X-Meta-ConsistencyLevel", "0")
            .body(random_bytes(2048, written.len() as u64))
            .send()
            .ok()?;
        assert!(r.status().is_success(), "put: {}", r.status());
        written.push(id);
        for id in written.iter().rev().take(5) {
            let _ = client()
                .get(format!("{base}/api/v1/get/{id}"))
                .send()
                .map(|r| r.bytes());
        }
        let v = get_json(&format!("{base}/api/v1/history"))?;
        let pts = v["points"].as_array()?;
        let busy = pts
            .iter()
            .filter(|p| p["req_per_sec"].as_f64().unwrap_or(0.0) > 0.0 && p["p50_ms"].is_number())
            .count();
        (pts.len() >= 3 && busy >= 2).then_some(v)
    });
    assert!(history["interval_ms"].as_u64().unwrap() > 0);

    // Every node learns the others' public URLs; `top` then watches all three.
    wait_for(
        "public URLs of all members",
        Duration::from_secs(30),
        || {
            let v = get_json(&format!("{base}/api/v1/cluster"))?;
            (v["public_urls"].as_object()?.len() == 3).then_some(())
        },
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nearcache"))
        .args([
            "top",
            "--json",
            "--interval",
            "0.2",
            "--iterations",
            "1",
            "--server",
            &base,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut servers: Vec<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["server"].as_str().unwrap().to_string())
        .collect();
    servers.sort();
    let mut want: Vec<String> = nodes.iter().map(|n| n.base()).collect();
    want.sort();
    assert_eq!(servers, want, "top watches every member");

    // The CLI sees the same cluster.
    let out = Command::new(env!("CARGO_BIN_EXE_nearcache"))
        .args(["cluster", "--json", "--server", &base])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 3);

    // The page's DOM after its scripts ran.
    let bin = chromium();
    let url = format!("{base}/ui");
    let dom = String::from_utf8(run_chromium(&bin, &url, &["--dump-dom".into()])).unwrap();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the script did not finish a refresh:\n{dom}"
    );
    let alive = dom.matches("class=\"member\" data-state=\"alive\"").count();
    assert_eq!(alive, 3, "three alive member rows:\n{dom}");
    for id in &ids {
        assert!(
            dom.contains(id.as_str()),
            "member {id} missing from the page"
        );
    }
    let points = |plot: &str| -> usize {
        let at = dom
            .find(&format!("id=\"{plot}\""))
            .unwrap_or_else(|| panic!("no {plot}"));
        let tag_end = dom[at..].find('>').unwrap() + at;
        let tag = &dom[at..tag_end];
        let v = tag.split("data-points=\"").nth(1).unwrap();
        v[..v.find('"').unwrap()].parse().unwrap()
    };
    for plot in ["plot-rps", "plot-hit", "plot-latency", "plot-uploads"] {
        assert!(points(plot) >= 2, "{plot} has no data:\n{dom}");
    }
    assert!(dom.contains("<polyline"), "no plot lines drawn");
    assert!(dom.contains("class=\"shard\""), "no shard rows");

    // The screenshot: decoded, sized as asked, and a real rendering.
    let shot_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let shot = shot_dir.join("nearcache-ui.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(&bin, &url, &[format!("--screenshot={}", shot.display())]);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 1700));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let px = |x: u32, y: u32| {
        let i = ((y * info.width + x) as usize) * channels;
        (buf[i], buf[i + 1], buf[i + 2])
    };
    let near = |a: (u8, u8, u8), b: (u8, u8, u8)| {
        a.0.abs_diff(b.0) <= 12 && a.1.abs_diff(b.1) <= 12 && a.2.abs_diff(b.2) <= 12
    };
    // The header band is the page's dark colour (#111827): CSS applied.
    assert!(
        near(px(4, 4), (0x11, 0x18, 0x27)),
        "header pixel {:?}",
        px(4, 4)
    );
    let mut colours = std::collections::HashSet::new();
    let (mut non_bg, mut blue) = (0usize, 0usize);
    for y in (0..info.height).step_by(2) {
        for x in (0..info.width).step_by(2) {
            let p = px(x, y);
            colours.insert(p);
            if !near(p, (0xf7, 0xf8, 0xfa)) && !near(p, (0xff, 0xff, 0xff)) {
                non_bg += 1;
            }
            // The request-rate and p50 lines (#2563eb).
            if near(p, (0x25, 0x63, 0xeb)) {
                blue += 1;
            }
        }
    }
    let total = (info.width as usize / 2) * (info.height as usize / 2);
    assert!(
        colours.len() > 50,
        "{} colours: a blank page?",
        colours.len()
    );
    assert!(
        non_bg * 20 > total,
        "only {non_bg} of {total} sampled pixels are not background"
    );
    assert!(blue > 30, "plot lines not visible ({blue} blue pixels)");
    println!(
        "screenshot: {} ({} colours, {blue} plot-line pixels)",
        shot.display(),
        colours.len()
    );
}
