//! Binary upgrade on SIGUSR2, systemd notifications, socket activation and JSON logs
//! (DESIGN §14, §3), through the binary on loopback.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::listening_ports;
use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_maitred");

/// The config of these tests: a listener and the admin listener on ports the kernel
/// picks, two backends, idle backend connections closed after a second.
fn config(backends: &[&TestBackend], server: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[server]\nthreads = 2\naccess_log = \"off\"\nlog_level = \"info\"\ngrace_period = \"10s\"\n{server}\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [pool.web]\nbalancer = \"round-robin\"\nbackends = [{list}]\nkeepalive_timeout = \"1s\"\n"
    )
}

/// A daemon and the processes that replaced it: every process of the chain logs to
/// one file (they share stderr), and all are killed when this is dropped.
struct Chain {
    first: Child,
    pid: u32,
    seen: Vec<u32>,
    log: PathBuf,
    listener: SocketAddr,
    admin: SocketAddr,
}

impl Chain {
    /// Runs `bin` on `config` in `dir` with `env` added, and waits until it listens.
    async fn start(bin: &Path, dir: &Path, config: &str, env: &[(&str, &str)]) -> Chain {
        let path = dir.join("maitred.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("maitred.stderr.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["run", "-c"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let first = cmd.spawn().unwrap();
        let pid = first.id();
        let mut chain = Chain {
            first,
            pid,
            seen: vec![pid],
            log,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        chain.find_ports().await;
        chain
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for both listening ports of the current process and tells them apart.
    async fn find_ports(&mut self) {
        let pid = self.pid;
        let listening =
            wait_until(DEADLINE, || async move { listening_ports(pid).len() == 2 }).await;
        assert!(listening, "not listening; log:\n{}", self.log());
        let ports = listening_ports(pid);
        let a = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let b = SocketAddr::from(([127, 0, 0, 1], ports[1]));
        let a_is_admin = admin_status(a).await.contains("\"pools\"");
        (self.admin, self.listener) = if a_is_admin { (a, b) } else { (b, a) };
    }

    /// Sends a signal to the current process.
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid);
    }

    /// SIGUSR2, then waits until the new process serves and the old one has exited;
    /// returns the new process id.
    async fn upgrade(&mut self) -> u32 {
        let old = self.pid;
        let pid = self.begin_upgrade().await;
        let gone = wait_until(DEADLINE, || async move { !alive(old) }).await;
        assert!(gone, "old process {old} still runs; log:\n{}", self.log());
        pid
    }

    /// SIGUSR2, then waits until the new process serves (the old one may still be
    /// finishing); returns the new process id, the current one from now on.
    async fn begin_upgrade(&mut self) -> u32 {
        const SERVES: &str = "upgrade: the new process ";
        let before = self.log().matches(SERVES).count();
        self.signal("USR2");
        let served = wait_until(DEADLINE, || async {
            self.log().matches(SERVES).count() > before
        })
        .await;
        assert!(
            served,
            "upgrade {} did not happen; log:\n{}",
            before + 1,
            self.log()
        );
        let log = self.log();
        let line = log
            .lines()
            .filter(|l| l.contains(SERVES))
            .nth(before)
            .unwrap();
        let pid: u32 = line
            .split(SERVES)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        self.seen.push(pid);
        self.pid = pid;
        pid
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for &pid in &self.seen {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.first.wait();
    }
}

/// The body of the admin listener's `/status` at `admin` (empty if it is not one).
async fn admin_status(admin: SocketAddr) -> String {
    let req = format!("GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    let answer = raw_until_closed(admin, req.as_bytes()).await;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.to_string(),
        _ => String::new(),
    }
}

/// Whether `pid` runs (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Open descriptors of `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Requests a keep-alive connection's end raced (the server closed it before any
    /// byte of an answer) and that were sent again on a new connection, as clients do
    /// (RFC 9112 §9.3.1).
    resent: AtomicU64,
    failures: Mutex<Vec<String>>,
    ws_messages: AtomicU64,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// How one exchange ended.
enum Exchange {
    /// A 200 answer; whether the server said it closes.
    Ok { close: bool },
    /// The connection ended before any byte of an answer.
    ClosedEarly,
    /// Anything else: a status other than 200, a reset, a cut answer, a timeout.
    Failed(String),
}

/// One GET on `s`, read to the end of its answer.
async fn exchange(s: &mut TcpStream, close: bool) -> Exchange {
    let req: &[u8] = if close {
        b"GET /load HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    } else {
        b"GET /load HTTP/1.1\r\nHost: t\r\n\r\n"
    };
    let work = async {
        if let Err(e) = s.write_all(req).await {
            return Exchange::Failed(format!("write: {e}"));
        }
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) if buf.is_empty() => return Exchange::ClosedEarly,
                Ok(0) => return Exchange::Failed("answer cut in its head".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Exchange::Failed(format!("read: {e}")),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Exchange::Failed(format!("answer: {}", head.lines().next().unwrap_or("")));
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match s.read(&mut chunk).await {
                Ok(0) => return Exchange::Failed("answer cut in its body".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Exchange::Failed(format!("read body: {e}")),
            }
        }
        Exchange::Ok {
            close: head.contains("connection: close"),
        }
    };
    tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| Exchange::Failed("no answer in time".into()))
}

/// Requests on keep-alive connections until `stop`.
async fn keep_alive_load(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut conn: Option<(TcpStream, bool)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (s, used) = match conn.as_mut() {
            Some(c) => c,
            None => match TcpStream::connect(addr).await {
                Ok(s) => conn.insert((s, false)),
                Err(e) => {
                    tally.fail(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match exchange(s, false).await {
            Exchange::Ok { close } => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                *used = true;
                if close {
                    conn = None;
                }
            }
            Exchange::ClosedEarly if *used => {
                tally.resent.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Exchange::ClosedEarly => {
                tally.fail("a new connection closed before its first answer".into());
                conn = None;
            }
            Exchange::Failed(why) => {
                tally.fail(format!("keep-alive: {why}"));
                conn = None;
            }
        }
    }
}

/// One request per new connection until `stop`.
async fn fresh_connection_load(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        let mut s = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                tally.fail(format!("connect: {e}"));
                continue;
            }
        };
        match exchange(&mut s, true).await {
            Exchange::Ok { .. } => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Exchange::ClosedEarly => tally.fail("new connection: closed before an answer".into()),
            Exchange::Failed(why) => tally.fail(format!("new connection: {why}")),
        }
    }
}

/// WebSockets, each open about a second with a message every 50 ms and closed by the
/// client, then opened again, until `stop`. Every message must be answered until the
/// client closes: the process that accepted it keeps it through an upgrade.
async fn websocket_load(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            tally.fail("websocket connect".into());
            continue;
        };
        let req = ws_request(addr, None);
        let mut ws = match tokio_tungstenite::client_async(req, tcp).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                tally.fail(format!("websocket handshake: {e}"));
                continue;
            }
        };
        for i in 0..20 {
            if ws.send(format!("m{i}").into()).await.is_err() {
                tally.fail(format!("websocket send {i}"));
                return;
            }
            match tokio::time::timeout(DEADLINE, ws.next()).await {
                Ok(Some(Ok(m))) if m.to_text().unwrap_or("").ends_with(&format!("m{i}")) => {
                    tally.ws_messages.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    tally.fail(format!("websocket reply {i}: {other:?}"));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    }
}

/// Twenty upgrades in a row under load: no request fails, no connection is refused or
/// reset, every WebSocket lives until its client closes it, a drain set through the
/// admin API carries over, and the last process holds no more descriptors than a
/// fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_upgrades_under_load_lose_nothing() {
    let b1 = TestBackend::start("1").await;
    let b2 = TestBackend::start("2").await;
    let text = config(&[&b1, &b2], "");
    let mut chain = Chain::start(Path::new(BIN), &scratch_dir("upgrade-chain"), &text, &[]).await;
    let (listener, admin) = (chain.listener, chain.admin);
    let drain = format!(
        "POST /pools/web/backends/{}/drain HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b2.addr
    );
    let answer = raw_until_closed(admin, drain.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    for _ in 0..6 {
        load.push(tokio::spawn(keep_alive_load(
            listener,
            Arc::clone(&stop),
            Arc::clone(&tally),
        )));
    }
    for _ in 0..3 {
        load.push(tokio::spawn(fresh_connection_load(
            listener,
            Arc::clone(&stop),
            Arc::clone(&tally),
        )));
    }
    for _ in 0..10 {
        load.push(tokio::spawn(websocket_load(
            listener,
            Arc::clone(&stop),
            Arc::clone(&tally),
        )));
    }
    let began = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        chain.upgrade().await;
        assert_eq!(listening_ports(chain.pid).len(), 2);
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let took = began.elapsed();
    let failures = tally.failures.lock().unwrap().clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    eprintln!(
        "20 upgrades in {took:?}: {ok} requests ({:.0}/s), {} sent again after a keep-alive close race, {} WebSocket messages",
        ok as f64 / took.as_secs_f64(),
        tally.resent.load(Ordering::Relaxed),
        tally.ws_messages.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:?}\nlog:\n{}",
        failures.len(),
        &failures[..failures.len().min(20)],
        chain.log()
    );
    assert!(ok > 1000, "too little load to prove anything: {ok}");
    assert!(!chain.log().contains("upgrade failed"), "{}", chain.log());

    // The drain set through the admin API in the first process holds in the last.
    let status = admin_status(admin).await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let backends = v["pools"]["web"]["backends"].as_array().unwrap();
    let drained = backends
        .iter()
        .find(|b| b["addr"] == b2.addr.to_string())
        .unwrap();
    assert_eq!(drained["state"], "drain", "{status}");

    // Descriptors: the last process, once its idle connections are gone, holds no more
    // than a fresh daemon on the same config.
    let fresh = Chain::start(Path::new(BIN), &scratch_dir("upgrade-fresh"), &text, &[]).await;
    assert_eq!(get(fresh.listener, "/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh_fds = open_fds(fresh.pid);
    let last = chain.pid;
    let mut last_fds = open_fds(last);
    let settled = wait_until(DEADLINE, || {
        last_fds = open_fds(last);
        async move { last_fds <= fresh_fds + 5 }
    })
    .await;
    assert!(
        settled,
        "the last process holds {last_fds} descriptors, a fresh one {fresh_fds}"
    );
    eprintln!("descriptors: last process {last_fds}, fresh process {fresh_fds}");
}

/// Opens a WebSocket to `addr` through the daemon.
async fn websocket(addr: SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let req = ws_request(addr, None);
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

/// Sends `text` and waits for its echo.
async fn echo(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, text: &str) -> bool {
    if ws.send(text.into()).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(DEADLINE, ws.next()).await,
        Ok(Some(Ok(m))) if m.to_text().unwrap_or("").ends_with(text)
    )
}

/// A WebSocket of the old process lives on after the new one serves, until the grace
/// period ends; meanwhile a SIGUSR2 to the new process is refused, and once the old one
/// has exited an upgrade goes through again.
#[tokio::test]
async fn an_old_tunnel_lives_until_grace_and_holds_off_the_next_upgrade() {
    let b1 = TestBackend::start("1").await;
    let text = config(&[&b1], "").replace("grace_period = \"10s\"", "grace_period = \"2s\"");
    let mut chain = Chain::start(Path::new(BIN), &scratch_dir("upgrade-grace"), &text, &[]).await;
    let mut ws = websocket(chain.listener).await;
    assert!(echo(&mut ws, "before").await);
    let old = chain.pid;
    let began = Instant::now();
    chain.begin_upgrade().await;
    assert!(alive(old));
    assert!(echo(&mut ws, "after the new process serves").await);

    chain.signal("USR2");
    let refused = wait_until(DEADLINE, || async {
        chain
            .log()
            .contains("SIGUSR2 refused: the process this one replaced is still finishing")
    })
    .await;
    assert!(refused, "{}", chain.log());
    assert!(echo(&mut ws, "still the old process").await);

    // The grace period ends the tunnel, then the old process.
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the tunnel outlived the grace period");
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        began.elapsed()
    );
    let gone = wait_until(DEADLINE, || async move { !alive(old) }).await;
    assert!(gone);
    let free = wait_until(DEADLINE, || async {
        chain.log().contains("the previous process has exited")
    })
    .await;
    assert!(free, "{}", chain.log());
    chain.upgrade().await;
    assert_eq!(get(chain.listener, "/").await.status, 200);
}

/// An upgrade to an executable that exits at once leaves the old process serving, and
/// a later upgrade to a working one still goes through.
#[tokio::test]
async fn an_upgrade_to_a_broken_binary_keeps_the_old_process_serving() {
    let b1 = TestBackend::start("1").await;
    let dir = scratch_dir("upgrade-broken");
    let bin = dir.join("maitred");
    std::fs::copy(BIN, &bin).unwrap();
    let mut chain = Chain::start(&bin, &dir, &config(&[&b1], ""), &[]).await;
    let first = chain.pid;
    assert_eq!(get(chain.listener, "/").await.status, 200);

    // The package manager's way: a new file renamed over the old one.
    let broken = dir.join("maitred.new");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken build' >&2\nexit 1\n").unwrap();
    let _ = Command::new("chmod").arg("+x").arg(&broken).status();
    std::fs::rename(&broken, &bin).unwrap();
    chain.signal("USR2");
    let refused = wait_until(DEADLINE, || async {
        chain.log().contains("upgrade failed")
    })
    .await;
    assert!(refused, "{}", chain.log());
    let log = chain.log();
    assert!(log.contains("exit status: 1"), "{log}");
    assert!(alive(first));
    assert_eq!(get(chain.listener, "/").await.status, 200);

    std::fs::copy(BIN, dir.join("maitred.new")).unwrap();
    std::fs::rename(dir.join("maitred.new"), &bin).unwrap();
    chain.upgrade().await;
    assert_eq!(get(chain.listener, "/").await.status, 200);
}

/// A new process that starts but never says it is ready is stopped after
/// `upgrade::READY_LIMIT` (30 s); the old one logs why and keeps serving throughout.
#[tokio::test]
async fn an_upgrade_that_never_becomes_ready_is_stopped_and_the_old_process_serves_on() {
    let b1 = TestBackend::start("1").await;
    let dir = scratch_dir("upgrade-silent");
    let bin = dir.join("maitred");
    std::fs::copy(BIN, &bin).unwrap();
    let chain = Chain::start(&bin, &dir, &config(&[&b1], ""), &[]).await;
    let first = chain.pid;

    // Starts, takes the hand-over channel, and never answers on it.
    let pid_file = dir.join("silent.pid");
    let silent = dir.join("maitred.new");
    let script = format!(
        "#!/bin/sh\necho $$ > '{}'\nexec sleep 120\n",
        pid_file.display()
    );
    std::fs::write(&silent, script).unwrap();
    let _ = Command::new("chmod").arg("+x").arg(&silent).status();
    std::fs::rename(&silent, &bin).unwrap();
    chain.signal("USR2");
    let limit = maitred::upgrade::READY_LIMIT + DEADLINE;
    let started = Instant::now();
    let mut served = 0;
    let mut stopped = false;
    while started.elapsed() < limit {
        assert_eq!(get(chain.listener, "/").await.status, 200, "while waiting");
        served += 1;
        if chain.log().contains("was not ready within") {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(stopped, "{}", chain.log());
    assert!(
        started.elapsed() >= maitred::upgrade::READY_LIMIT - Duration::from_secs(1),
        "stopped before its 30 s"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || async { !alive(pid) }).await,
        "the silent process still runs"
    );
    assert!(alive(first) && served > 0);
    assert_eq!(get(chain.listener, "/").await.status, 200);
}

/// Reads notification datagrams until one contains `needle`; returns the ones read.
fn notifications_until(sock: &UnixDatagram, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.contains(needle);
            seen.push(text);
            if done {
                return seen;
            }
        }
    }
    panic!("no notification with {needle:?} within {DEADLINE:?}; seen: {seen:?}");
}

/// The service manager hears READY=1 at start, RELOADING=1 and READY=1 around a
/// reload, MAINPID= and READY=1 from the new process of an upgrade (and no STOPPING=1
/// from the old one), STOPPING=1 at shutdown, and watchdog pings throughout.
#[tokio::test]
async fn the_service_manager_hears_start_reload_upgrade_and_stop() {
    let b1 = TestBackend::start("1").await;
    let dir = scratch_dir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify = path.to_str().unwrap();
    let env = [("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")];
    let mut chain = Chain::start(Path::new(BIN), &dir, &config(&[&b1], ""), &env).await;
    let not_watchdog =
        |v: Vec<String>| -> Vec<String> { v.into_iter().filter(|m| m != "WATCHDOG=1\n").collect() };
    assert_eq!(
        not_watchdog(notifications_until(&sock, "READY=1")),
        ["READY=1\n"]
    );
    notifications_until(&sock, "WATCHDOG=1");

    chain.signal("HUP");
    let reload = not_watchdog(notifications_until(&sock, "READY=1"));
    assert_eq!(reload.len(), 2, "{reload:?}");
    let mut lines = reload[0].lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .unwrap()
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert_eq!(reload[1], "READY=1\n");

    let new = chain.upgrade().await;
    let upgrade = not_watchdog(notifications_until(&sock, "MAINPID="));
    assert_eq!(upgrade, [format!("MAINPID={new}\nREADY=1\n")]);
    // The new process pings the watchdog as the main process.
    notifications_until(&sock, "WATCHDOG=1");

    chain.signal("TERM");
    let stop = not_watchdog(notifications_until(&sock, "STOPPING=1"));
    assert_eq!(
        stop,
        ["STOPPING=1\n"],
        "the old process must not say it stops"
    );
}

/// Listening sockets passed as systemd does (descriptors 3 and 4, `LISTEN_FDS`,
/// `LISTEN_PID`) are matched by address and served on, not bound again: the test
/// holds both addresses bound, so a bind would fail.
#[tokio::test]
#[allow(unsafe_code)]
async fn socket_activation_serves_on_the_passed_sockets() {
    let b1 = TestBackend::start("1").await;
    let dir = scratch_dir("activation");
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let adm = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (web_addr, adm_addr) = (web.local_addr().unwrap(), adm.local_addr().unwrap());
    let text = config(&[&b1], "")
        .replacen(
            "bind = \"127.0.0.1:0\"",
            &format!("bind = \"{adm_addr}\""),
            1,
        )
        .replacen(
            "bind = \"127.0.0.1:0\"",
            &format!("bind = \"{web_addr}\""),
            1,
        );
    let cfg = dir.join("maitred.toml");
    std::fs::write(&cfg, text).unwrap();
    let log = dir.join("maitred.stderr.log");
    // Copies above the standard descriptors, so that moving them to 3 and 4 in the
    // child cannot overwrite one with the other.
    let high_web = rustix::io::fcntl_dupfd_cloexec(&web, 100).unwrap();
    let high_adm = rustix::io::fcntl_dupfd_cloexec(&adm, 100).unwrap();
    let (fd_web, fd_adm) = (high_web.as_raw_fd(), high_adm.as_raw_fd());
    let mut cmd = Command::new("sh");
    // The shell's $$ is the daemon's pid: exec keeps it.
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", BIN, "run", "-c"])
        .arg(&cfg)
        .env("LISTEN_FDS", "2")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    // SAFETY: dup2 is async-signal-safe; the child runs nothing else before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(fd_web, 3) < 0 || libc::dup2(fd_adm, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop((high_web, high_adm));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let up = wait_until(DEADLINE, || async { log_text().contains("running") }).await;
    let exited = child.try_wait().unwrap();
    if !up || exited.is_some() {
        let _ = child.kill();
        panic!("exit {exited:?}; log:\n{}", log_text());
    }
    let reply = tokio::time::timeout(DEADLINE, get(web_addr, "/")).await;
    let status = tokio::time::timeout(DEADLINE, admin_status(adm_addr)).await;
    let _ = child.kill();
    let _ = child.wait();
    let reply = reply.expect("no answer on the passed listener");
    assert_eq!((reply.status, reply.body.trim()), (200, "backend 1"));
    assert!(
        status
            .expect("no answer on the passed admin socket")
            .contains("\"pools\"")
    );
    assert!(
        !log_text().contains("matches no listener"),
        "{}",
        log_text()
    );
}

/// With `log_format = "json"`, every line of the daemon's log and of the access log
/// is one JSON object, the access log's with its fields named.
#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let b1 = TestBackend::start("1").await;
    let dir = scratch_dir("json-logs");
    let access = dir.join("access.log");
    let text = config(&[&b1], "log_format = \"json\"").replace(
        "access_log = \"off\"",
        &format!("access_log = \"{}\"", access.display()),
    );
    let chain = Chain::start(Path::new(BIN), &dir, &text, &[]).await;
    assert_eq!(get(chain.listener, "/json?x=1").await.status, 200);
    let written = wait_until(DEADLINE, || async {
        std::fs::read_to_string(&access).is_ok_and(|t| t.contains("/json"))
    })
    .await;
    assert!(written);
    let access_text = std::fs::read_to_string(&access).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(access_text.lines().last().unwrap()).unwrap();
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/json");
    assert_eq!(line["status"], 200);
    assert_eq!(line["pool"], "web");
    assert_eq!(line["backend"], b1.addr.to_string());
    assert_eq!(line["client"], "127.0.0.1");
    assert!(line["duration_ms"].is_f64() || line["duration_ms"].is_u64());
    let log = chain.log();
    let mut running = false;
    for l in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
        running |= v["message"].as_str().is_some_and(|m| m.contains("running"));
    }
    assert!(running, "{log}");
}
