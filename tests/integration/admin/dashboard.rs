//! The dashboard (`GET /`) in headless Chromium: every backend shows, and a drain made
//! through the API shows on the next load.
//!
//! Without chromium the test skips with a note on stderr, except under CI (`CI` set, as
//! CI services and `.ci/run` do), where a missing browser is a failure: a check that
//! silently does not run is worse than none. A chromium that is there but cannot start
//! or render fails the test everywhere.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{admin_addr, admin_config, admin_post};
use crate::common::*;

/// The headless browser to use: `$CHROMIUM`, else `chromium` or `chromium-browser`
/// on `PATH` or where Debian installs it.
fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]);
    dirs.flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .find(|p| p.is_file())
}

/// Whether this run is CI's: `CI` set to anything but empty, `0` or `false` (services
/// spell it `true`, `1` or `True`).
fn under_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

/// Loads `url` in a fresh headless Chromium profile and returns the DOM it dumps. Every
/// process of that browser is killed before returning: found by the profile directory
/// in its command line, which no other process shares.
async fn dump_dom(chromium: &Path, url: &str) -> String {
    let dir = scratch_dir("chromium");
    let chromium = chromium.to_path_buf();
    let url = url.to_string();
    let run_dir = dir.clone();
    let (status, dom, stderr) = tokio::task::spawn_blocking(move || {
        let profile = run_dir.join("profile");
        let out = std::fs::File::create(run_dir.join("dom.html")).unwrap();
        let err = std::fs::File::create(run_dir.join("stderr.txt")).unwrap();
        let mut child = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=5000", "--dump-dom", &url])
            .env("XDG_CONFIG_HOME", run_dir.join("config"))
            .env("XDG_CACHE_HOME", run_dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let end = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        kill_processes_mentioning(&run_dir);
        let dom = std::fs::read_to_string(run_dir.join("dom.html")).unwrap_or_default();
        let stderr = std::fs::read_to_string(run_dir.join("stderr.txt")).unwrap_or_default();
        (status, dom, stderr)
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium failed ({status:?}):\n{stderr}"
    );
    dom
}

/// Kills (by pid) every process whose command line contains `marker`, until none is left.
fn kill_processes_mentioning(marker: &Path) {
    let marker = marker.to_string_lossy().into_owned();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<String> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(&marker)
                    .then(|| pid.to_string())
            })
            .collect();
        if pids.is_empty() || Instant::now() >= end {
            return;
        }
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The opening tag of the dashboard row for `POOL/ADDR`, if the DOM has one.
fn backend_row<'a>(dom: &'a str, key: &str) -> Option<&'a str> {
    let at = dom.find(&format!("data-backend=\"{key}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let from = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[from..].find('"')?;
    Some(&tag[from..from + len])
}

/// The browser, or `None` after saying why `test` is skipped (never under CI).
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert!(
            !under_ci(),
            "CI: the dashboard browser test needs chromium (on PATH, /usr/bin, or $CHROMIUM)"
        );
        // Straight to stderr: the test harness would swallow a print from a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "skipping {test}: no chromium (install it or set $CHROMIUM; under CI this fails)"
        );
    }
    found
}

/// The opening tag of the chart of `metric` for `pool`, if the DOM has one.
fn chart<'a>(dom: &'a str, pool: &str, metric: &str) -> Option<&'a str> {
    dom.match_indices("<svg").find_map(|(start, _)| {
        let tag = &dom[start..=start + dom[start..].find('>')?];
        (attr(tag, "data-pool") == Some(pool) && attr(tag, "data-metric") == Some(metric))
            .then_some(tag)
    })
}

#[tokio::test]
async fn dashboard_in_headless_chromium_shows_backends_and_drain() {
    let Some(chromium) =
        chromium_or_skip("dashboard_in_headless_chromium_shows_backends_and_drain")
    else {
        return;
    };
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&admin_config(&[&a, &b], None)).await;
    let url = format!("http://{}/", admin_addr(&d));

    let dom = dump_dom(&chromium, &url).await;
    for be in [&a, &b] {
        let key = format!("web/{}", be.addr);
        let row = backend_row(&dom, &key).unwrap_or_else(|| panic!("no row for {key} in:\n{dom}"));
        assert_eq!(attr(row, "data-state"), Some("active"), "{row}");
        assert_eq!(attr(row, "data-health"), Some("up"), "{row}");
    }
    assert!(dom.contains("round-robin"), "the pool's balancer is shown");

    let drain = format!("/pools/web/backends/{}/drain", b.addr);
    assert_eq!(admin_post(&d, &drain, None).await.status, 200);
    let dom = dump_dom(&chromium, &url).await;
    let row_a = backend_row(&dom, &format!("web/{}", a.addr)).unwrap();
    let row_b = backend_row(&dom, &format!("web/{}", b.addr)).unwrap();
    assert_eq!(attr(row_a, "data-state"), Some("active"), "{row_a}");
    assert_eq!(attr(row_b, "data-state"), Some("drain"), "{row_b}");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn dashboard_charts_draw_the_daemons_history_and_follow_it() {
    let Some(chromium) =
        chromium_or_skip("dashboard_charts_draw_the_daemons_history_and_follow_it")
    else {
        return;
    };
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&admin_config(&[&a, &b], None)).await;
    let url = format!("http://{}/", admin_addr(&d));
    // A second of history, before any request.
    let sampled = wait_until(DEADLINE, || async {
        let s = super::status(&d).await;
        !s["pools"]["web"]["history"]["rps"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(sampled, "the daemon samples its pools every second");

    let dom = dump_dom(&chromium, &url).await;
    let mut before = Vec::new();
    for metric in ["rps", "error_rate", "p99_ms"] {
        let tag =
            chart(&dom, "web", metric).unwrap_or_else(|| panic!("no {metric} chart in:\n{dom}"));
        let samples: usize = attr(tag, "data-samples").unwrap().parse().unwrap();
        assert!(samples >= 1, "{tag}");
        before.push(samples);
    }
    assert_eq!(
        attr(chart(&dom, "web", "rps").unwrap(), "data-max"),
        Some("0")
    );

    // Traffic for a few seconds shows in the charts of a page opened afterwards.
    let mut c = Client::connect(addr(&d)).await;
    let end = Instant::now() + DEADLINE;
    let mut busy = false;
    while !busy && Instant::now() < end {
        for _ in 0..50 {
            assert_eq!(c.get("/", &[]).await.status, 200);
        }
        let s = super::status(&d).await;
        let rps = s["pools"]["web"]["history"]["rps"]
            .as_array()
            .unwrap()
            .clone();
        busy = rps.iter().filter(|v| v.as_f64().unwrap() > 0.0).count() >= 2;
    }
    assert!(busy, "two seconds with requests in the history");
    let drain = format!("/pools/web/backends/{}/drain", b.addr);
    assert_eq!(admin_post(&d, &drain, None).await.status, 200);

    let dom = dump_dom(&chromium, &url).await;
    let rps = chart(&dom, "web", "rps").unwrap();
    let samples: usize = attr(rps, "data-samples").unwrap().parse().unwrap();
    assert!(samples > before[0], "more samples: {rps}");
    let max: f64 = attr(rps, "data-max").unwrap().parse().unwrap();
    assert!(max > 0.0, "the requests show: {rps}");
    let p99 = chart(&dom, "web", "p99_ms").unwrap();
    assert!(
        attr(p99, "data-max").unwrap().parse::<f64>().unwrap() > 0.0,
        "{p99}"
    );
    assert!(dom.contains("<path d=\"M"), "a line is drawn");
    let row_b = backend_row(&dom, &format!("web/{}", b.addr)).unwrap();
    assert_eq!(attr(row_b, "data-state"), Some("drain"), "{row_b}");
    assert!(
        row_b.contains("data-nothing-bound"),
        "idle and not sticky: {row_b}"
    );
    assert!(
        dom.contains("nothing bound — safe to remove"),
        "the drain's end is shown"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}
