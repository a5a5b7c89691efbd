//! The binary: `check`, `--version`, graceful SIGTERM, streaming memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_maitred");

/// A config file: one listener on a port the daemon picks (port 0) in front of one
/// backend, one worker thread, with `server` added to `[server]`.
fn one_pool_config(backend: SocketAddr, server: &str) -> String {
    format!(
        "[server]\nthreads = 1\n{server}\n\n[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n[pool.web]\nbalancer = \"round-robin\"\nbackends = [\"{backend}\"]\n"
    )
}

/// A daemon process, killed when dropped. Its stderr (the log) goes to a file beside
/// its config, so a test can wait for a log line and a failure can show the log.
pub struct Proc {
    pub child: Child,
    log: PathBuf,
}

impl Proc {
    /// Runs the binary on `config`, with the log level the file sets (`RUST_LOG` is
    /// not passed on: tests wait for log lines).
    pub fn start(config: &Path) -> Proc {
        let log = config.with_extension("stderr.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> bool {
        wait_until(DEADLINE, || async { self.log().contains(needle) }).await
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Waits for exit within `limit`; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until the daemon listens, and returns the address of its only listening
    /// socket. The config binds port 0, so the kernel picks a port no one else holds;
    /// choosing a free port in the test and passing it on would race with every other
    /// test binding sockets meanwhile.
    pub async fn listening_addr(&mut self) -> SocketAddr {
        let pid = self.child.id();
        let mut ports = Vec::new();
        let mut exited = None;
        let found = wait_until(DEADLINE, || {
            ports = listening_ports(pid);
            exited = self.child.try_wait().unwrap();
            let done = !ports.is_empty() || exited.is_some();
            async move { done }
        })
        .await;
        assert!(
            found && exited.is_none(),
            "the daemon is not listening (exit: {exited:?}); its log:\n{}",
            self.log()
        );
        assert_eq!(ports.len(), 1, "one listener expected: {ports:?}");
        SocketAddr::from(([127, 0, 0, 1], ports[0]))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TCP ports process `pid` listens on: its socket descriptors (`/proc/PID/fd`)
/// matched by inode to the LISTEN entries of the kernel's IPv4 socket table.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            let link = link.to_str()?;
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            const LISTEN: &str = "0A";
            if *state != LISTEN || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

/// Writes `config` to `path`, runs the binary on it, and waits until it listens.
async fn run_binary(path: &Path, config: &str) -> (Proc, SocketAddr) {
    std::fs::write(path, config).unwrap();
    let mut p = Proc::start(path);
    let addr = p.listening_addr().await;
    (p, addr)
}

/// Runs the binary on a one-pool config in front of `backend`, in a scratch dir named
/// `tag`; `server` goes into `[server]`.
async fn run_one_pool(tag: &str, backend: SocketAddr, server: &str) -> (Proc, SocketAddr) {
    let path = scratch_dir(tag).join("maitred.toml");
    run_binary(&path, &one_pool_config(backend, server)).await
}

#[test]
fn version_prints_name_and_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("maitred {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `maitred check -c PATH`, which must succeed; its standard output.
pub fn check_passes(path: &Path) -> String {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/maitred.example.toml");
    let stdout = check_passes(Path::new(example));
    assert!(stdout.lines().any(|l| l.starts_with("pool ")), "{stdout}");
}

#[test]
fn check_reports_errors_with_line_and_column() {
    let dir = scratch_dir("check");
    let path = dir.join("maitred.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n[pool.web]\nbalancer = \"round_robin\"\nbackends = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:7:12: unknown balancer \"round_robin\"",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "expected one of round-robin, least-connections, ip-hash, hash, cookie-affinity"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let b = TestBackend::start("a").await;
    let (mut p, a) = run_one_pool(
        "sigterm",
        b.addr,
        "grace_period = \"10s\"\naccess_log = \"off\"",
    )
    .await;
    let slow = tokio::spawn(async move { get(a, "/slow?ms=1500").await });
    assert!(wait_until(DEADLINE, || async { b.hits() == 1 }).await);
    p.signal("TERM");
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "backend a\n");
    let code = tokio::task::spawn_blocking(move || p.wait_exit(DEADLINE))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn twenty_mib_streams_without_buffering_in_the_daemon() {
    let b = TestBackend::start("a").await;
    let (p, a) = run_one_pool("stream", b.addr, "access_log = \"off\"").await;
    let mut c = Client::connect(a).await;
    // Warm up so allocator arenas and buffers exist before measuring.
    assert_eq!(c.get("/big?mb=1", &[]).await.status, 200);
    let before = p.rss_kib();
    let body = Bytes::from(vec![b'u'; 20 * 1024 * 1024]);
    let up = c.send("POST", "/sink", &[], body).await.unwrap();
    assert_eq!(up.body.trim(), (20 * 1024 * 1024).to_string());
    let down = c.get("/big?mb=20", &[]).await;
    assert_eq!(down.body.len(), 20 * 1024 * 1024);
    let grown = p.rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "daemon RSS grew by {grown} KiB for 20 MiB bodies"
    );
}

fn hash_pool_config(backends: usize, rr_backends: usize) -> String {
    let list = |base: u16, n: usize| {
        (0..n)
            .map(|i| format!("\"127.0.0.1:{}\"", base + i as u16))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n[pool.web]\nbalancer = \"round-robin\"\nbackends = [{}]\n\n[pool.sessions]\nbalancer = \"hash\"\nkey = \"cookie:JSESSIONID\"\nbackends = [{}]\n",
        list(9100, rr_backends),
        list(9200, backends)
    )
}

#[test]
fn check_against_reports_sticky_keys_moved() {
    let dir = scratch_dir("against");
    let (old, grown, rr_only) = (
        dir.join("old.toml"),
        dir.join("new.toml"),
        dir.join("rr.toml"),
    );
    std::fs::write(&old, hash_pool_config(4, 2)).unwrap();
    std::fs::write(&grown, hash_pool_config(5, 2)).unwrap();
    std::fs::write(&rr_only, hash_pool_config(4, 3)).unwrap();

    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&grown)
        .arg("--against")
        .arg(&old)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pool sessions: ") && l.ends_with("of sticky keys move"))
        .unwrap_or_else(|| panic!("no sticky line in {stdout}"));
    let pct: f64 = line
        .trim_start_matches("pool sessions: ")
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((10.0..=25.0).contains(&pct), "4 → 5 backends moved {pct}%");
    assert!(line.ends_with("% of sticky keys move"), "{line}");
    assert!(stdout.contains("backends +1 -0 ~0"), "{stdout}");

    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&rr_only)
        .arg("--against")
        .arg(&old)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pool sessions: 0.0% of sticky keys move"),
        "{stdout}"
    );

    // Same change twice: same figure.
    let again = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&grown)
        .arg("--against")
        .arg(&old)
        .output()
        .unwrap();
    let first = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&grown)
        .arg("--against")
        .arg(&old)
        .output()
        .unwrap();
    assert_eq!(again.stdout, first.stdout);

    // An invalid OLD fails the check like `check` does.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[pool.x]\nbalancer = \"nope\"\nbackends = []\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&grown)
        .arg("--against")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml:2:12"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_accepts_the_shipped_examples() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            check_passes(&path);
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("sighup");
    let path = dir.join("maitred.toml");
    let conf = |backend: SocketAddr| one_pool_config(backend, "access_log = \"off\"");
    let (mut p, target) = run_binary(&path, &conf(a.addr)).await;
    assert_eq!(get(target, "/").await.body, "backend a\n");
    std::fs::write(&path, conf(b.addr)).unwrap();
    p.signal("HUP");
    assert!(
        wait_until(DEADLINE, || async {
            get(target, "/").await.body == "backend b\n"
        })
        .await,
        "SIGHUP did not apply the new file"
    );
    // A broken file on SIGHUP: once the daemon has rejected it, still serving, process
    // alive.
    std::fs::write(&path, "[[listener]\n").unwrap();
    p.signal("HUP");
    assert!(
        p.wait_log("reload failed, running config kept").await,
        "the broken file was not reported: {}",
        p.log()
    );
    assert_eq!(get(target, "/").await.body, "backend b\n");
    assert!(p.child.try_wait().unwrap().is_none(), "the daemon exited");
}

#[tokio::test]
async fn access_log_writes_one_line_per_request() {
    let b = TestBackend::start("a").await;
    let dir = scratch_dir("access");
    let log = dir.join("access.log");
    let path = dir.join("maitred.toml");
    let (_p, target) = run_binary(
        &path,
        &one_pool_config(b.addr, &format!("access_log = \"{}\"", log.display())),
    )
    .await;
    let mut c = Client::connect(target).await;
    c.get("/first?x=1", &[]).await;
    c.get("/second", &[]).await;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(DEADLINE, || async { read().lines().count() >= 2 }).await);
    let text = read();
    let line = text.lines().find(|l| l.contains("/second")).unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    // TIME CLIENT METHOD PATH STATUS POOL BACKEND DURATION_MS BYTES
    assert_eq!(fields.len(), 9, "{line}");
    assert_eq!(&fields[1..5], &["127.0.0.1", "GET", "/second", "200"]);
    assert_eq!(fields[5], "web");
    assert_eq!(fields[6], b.addr.to_string());
    assert!(fields[7].parse::<f64>().is_ok());
    assert_eq!(fields[8], "10");
}

#[tokio::test]
async fn second_sigterm_exits_at_once() {
    let b = TestBackend::start("a").await;
    let (mut p, a) = run_one_pool(
        "sigterm2",
        b.addr,
        "grace_period = \"60s\"\naccess_log = \"off\"",
    )
    .await;
    let slow = tokio::spawn(async move {
        let mut c = Client::connect(a).await;
        c.send("GET", "/slow?ms=30000", &[], Bytes::new()).await
    });
    let short = tokio::spawn(async move { get(a, "/slow?ms=1500").await });
    assert!(wait_until(DEADLINE, || async { b.hits() == 2 }).await);
    p.signal("TERM");
    // The first signal starts a 60 s grace period: the daemon says so, finishes the
    // shorter request, and is still running for the longer one. The second ends it.
    assert!(
        p.wait_log("shutting down").await,
        "the first SIGTERM was not handled: {}",
        p.log()
    );
    assert_eq!(short.await.unwrap().status, 200);
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited before the grace period"
    );
    p.signal("TERM");
    let code = tokio::task::spawn_blocking(move || p.wait_exit(DEADLINE))
        .await
        .unwrap();
    assert_eq!(code, Some(maitred::signals::FORCED_EXIT));
    assert!(
        slow.await.unwrap().is_err(),
        "the cut-off request cannot have completed"
    );
}

#[tokio::test]
async fn demo_serves_round_robin_and_sticky_pools() {
    use std::io::BufRead;
    let log = scratch_dir("demo").join("stderr.log");
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Keep draining stdout (the access log goes there) so the demo never blocks on it.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(a) = line.trim().strip_prefix("balancer on http://") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(a.to_string());
                }
            }
        }
    });
    let balancer = tokio::time::timeout(DEADLINE, rx)
        .await
        .ok()
        .and_then(Result::ok);
    let proc = Proc { child, log };
    let target: SocketAddr = balancer
        .unwrap_or_else(|| panic!("demo printed no balancer URL; its log:\n{}", proc.log()))
        .parse()
        .unwrap();
    let mut c = Client::connect(target).await;
    let mut plain = Vec::new();
    for _ in 0..6 {
        plain.push(c.get("/", &[]).await.body);
    }
    assert_eq!(
        tally(&plain).len(),
        3,
        "round-robin over three demo backends: {plain:?}"
    );
    let first = c.get("/sticky", &[]).await;
    let cookie = first.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for _ in 0..5 {
        assert_eq!(
            c.get("/sticky", &[("cookie", &cookie)]).await.body,
            first.body
        );
    }
    drop(proc);
}

#[tokio::test]
async fn access_log_follows_rotation_on_sighup() {
    let b = TestBackend::start("a").await;
    let dir = scratch_dir("rotate");
    let log = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let path = dir.join("maitred.toml");
    let server = format!("access_log = \"{}\"", log.display());
    let (p, target) = run_binary(&path, &one_pool_config(b.addr, &server)).await;
    get(target, "/before").await;
    let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap_or_default();
    assert!(wait_until(DEADLINE, || async { read(&log).contains("/before") }).await);
    std::fs::rename(&log, &rotated).unwrap();
    p.signal("HUP");
    // Requests until one lands in the new file: the reopen happens on the reload.
    assert!(
        wait_until(DEADLINE, || async {
            get(target, "/after").await;
            read(&log).contains("/after")
        })
        .await,
        "the access log was not reopened after rotation"
    );
    assert!(read(&rotated).contains("/before"));
}

#[tokio::test]
async fn log_level_change_applies_on_sighup() {
    let b = TestBackend::start("a").await;
    let dir = scratch_dir("loglevel");
    let path = dir.join("maitred.toml");
    let with_level = |level: &str| {
        one_pool_config(
            b.addr,
            &format!("access_log = \"off\"\nlog_level = \"{level}\""),
        )
    };
    let (p, _target) = run_binary(&path, &with_level("error")).await;
    std::fs::write(&path, with_level("info")).unwrap();
    p.signal("HUP");
    assert!(
        p.wait_log("reload: listeners").await,
        "the reload line was not logged after switching to info: {}",
        p.log()
    );
    // Everything before the reload applied the new level was logged at `error`: the
    // start-up line and "SIGHUP: reloading" are info lines and must not be there.
    let log = p.log();
    let before: Vec<&str> = log
        .lines()
        .take_while(|l| !l.contains("reload: listeners"))
        .collect();
    assert!(
        !before.iter().any(|l| l.contains("INFO")),
        "info lines logged at log_level = error:\n{log}"
    );
}
