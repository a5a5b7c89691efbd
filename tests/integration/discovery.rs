//! DNS discovery (DESIGN §10) against a real DNS server on loopback (`dns.rs`): pools
//! that follow a zone as it scales, SRV weights and priorities, failures that change
//! nothing, draining backends that keep their clients and tunnels, the sticky share a
//! hash pool moves, reloads that keep discovered backends, and `check --resolve`.

mod dns;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use maitred::app::Daemon;
use maitred::config::AdminState;

use crate::common::*;
use dns::{Mode, Srv, TestDns};

const NAME: &str = "svc.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `n` test backends at 127.0.0.2, .3, ... all on one port (A records carry no port).
async fn backends_on_one_port(n: u8) -> Vec<TestBackend> {
    let first = TestBackend::start_on("b2", SocketAddr::new(ip(2), 0)).await;
    let port = first.addr.port();
    let mut all = vec![first];
    for i in 3..2 + n {
        all.push(TestBackend::start_on(&format!("b{i}"), SocketAddr::new(ip(i), port)).await);
    }
    all
}

/// One pool `web` with no static backends and a discovery section asking `dns`.
fn discovery_config(balancer: &str, dns: &TestDns, section: &str, extra: &str) -> String {
    format!(
        "{}\n[pool.web.discovery]\nresolvers = [\"{}\"]\n{section}\n",
        config_for(balancer, &[], extra),
        dns.addr
    )
}

/// The pool's backends now: address → admin state.
fn table(d: &Daemon) -> HashMap<String, AdminState> {
    let snap = d.shared().live.load();
    snap.pool("web")
        .map(|p| {
            p.backends
                .iter()
                .map(|b| (b.name.to_string(), b.live.admin()))
                .collect()
        })
        .unwrap_or_default()
}

/// The backends taking new work.
fn active(d: &Daemon) -> BTreeSet<String> {
    table(d)
        .into_iter()
        .filter(|(_, s)| *s == AdminState::Active)
        .map(|(a, _)| a)
        .collect()
}

fn names(backends: &[&TestBackend]) -> BTreeSet<String> {
    backends.iter().map(|b| b.addr.to_string()).collect()
}

fn ips(backends: &[&TestBackend]) -> Vec<IpAddr> {
    backends.iter().map(|b| b.addr.ip()).collect()
}

/// Requests sent one after another on keep-alive connections until stopped, counting
/// answers other than 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(target: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, n, f) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let mut client = Client::connect(target).await;
            while !s.load(Ordering::SeqCst) {
                match client.send("GET", "/", &[], bytes::Bytes::new()).await {
                    Ok(r) if r.status == 200 => {}
                    _ => {
                        f.fetch_add(1, Ordering::SeqCst);
                        client = Client::connect(target).await;
                    }
                }
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        Load {
            stop,
            sent,
            failed,
            task,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// Waits until the backends taking new work are `want`; returns how long it took.
async fn follows(d: &Daemon, want: &BTreeSet<String>) -> Duration {
    let t0 = Instant::now();
    assert!(
        wait_until(DEADLINE, || async { active(d) == *want }).await,
        "pool never followed DNS to {want:?}; has {:?}",
        table(d)
    );
    t0.elapsed()
}

#[tokio::test]
async fn pool_follows_dns_from_3_to_5_to_2_backends_under_load_without_a_failed_request() {
    let b = backends_on_one_port(5).await;
    let all: Vec<&TestBackend> = b.iter().collect();
    let port = b[0].addr.port();
    let dns = TestDns::start(1).await;
    dns.set_addrs(NAME, &ips(&all[..3]));
    let section =
        format!("dns = \"{NAME}:{port}\"\nmin_interval = \"200ms\"\nmax_interval = \"5s\"");
    let d = start_daemon(&discovery_config("round-robin", &dns, &section, "")).await;
    assert_eq!(
        active(&d),
        names(&all[..3]),
        "started with the first answer"
    );
    let load = Load::start(addr(&d));
    let ttl_plus_1s = Duration::from_secs(2);

    dns.set_addrs(NAME, &ips(&all));
    let took = follows(&d, &names(&all)).await;
    eprintln!("3 -> 5 followed in {took:?}");
    assert!(took <= ttl_plus_1s, "scale-out took {took:?}");
    let before: Vec<usize> = b.iter().map(|x| x.hits()).collect();
    assert!(
        wait_until(DEADLINE, || async {
            b.iter().zip(&before).all(|(x, n)| x.hits() > *n)
        })
        .await,
        "every backend takes work after the scale-out"
    );

    dns.set_addrs(NAME, &ips(&all[..2]));
    let took = follows(&d, &names(&all[..2])).await;
    eprintln!("5 -> 2 followed in {took:?}");
    assert!(took <= ttl_plus_1s, "scale-in took {took:?}");
    assert!(
        wait_until(DEADLINE, || async { table(&d).len() == 2 }).await,
        "drained backends were not removed: {:?}",
        table(&d)
    );
    let gone: Vec<usize> = b[2..].iter().map(|x| x.hits()).collect();
    let sent = load.sent.load(Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            load.sent.load(Ordering::SeqCst) > sent + 50
        })
        .await
    );
    let (sent, failed) = load.finish().await;
    eprintln!("{sent} requests under load, {failed} failed");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert_eq!(
        b[2..].iter().map(|x| x.hits()).collect::<Vec<_>>(),
        gone,
        "removed backends took new work"
    );

    let views = d.shared().discovery.views();
    let v = &views["web"];
    assert_eq!(v.backends, 2);
    assert!(v.status.last_resolved.is_some() && v.status.resolutions[0] >= 3);
    let snap = d.shared().live.load();
    let cfg = snap.config.pool("web").unwrap();
    assert!(cfg.backends.iter().all(|b| b.source.name() == "dns"));
    let metrics = maitred::metrics::render(d.shared()).unwrap();
    assert!(
        metrics.contains("maitred_discovery_backends{pool=\"web\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("maitred_discovery_resolutions_total{pool=\"web\",result=\"ok\"}"));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn srv_weights_one_to_three_split_new_work_25_75_and_a_backup_priority_waits() {
    let (a, b, backup) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("backup").await,
    );
    let dns = TestDns::start(30).await;
    dns.set_addrs("node.test", &[ip(1)]);
    let srv = |b: &TestBackend, priority, weight| Srv {
        priority,
        weight,
        port: b.addr.port(),
        target: "node.test".into(),
    };
    dns.set_srv(
        "_http._tcp.svc.test",
        vec![srv(&a, 10, 1), srv(&b, 10, 3), srv(&backup, 20, 1)],
    );
    let section = "srv = \"_http._tcp.svc.test\"";
    let d = start_daemon(&discovery_config("round-robin", &dns, section, "")).await;
    assert!(
        wait_until(DEADLINE, || async { active(&d) == names(&[&a, &b]) }).await,
        "priority 20 is not used while priority 10 has a backend up: {:?}",
        table(&d)
    );
    let mut client = Client::connect(addr(&d)).await;
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..400 {
        assert_eq!(client.get("/", &[]).await.status, 200);
    }
    let (na, nb) = (a.hits() - a0, b.hits() - b0);
    let share = na as f64 / 400.0;
    eprintln!("SRV weights 1:3: a {na}, b {nb}");
    assert!((0.20..=0.30).contains(&share), "a {na}, b {nb}");
    assert_eq!(na + nb, 400);
    assert_eq!(backup.hits(), 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn failed_resolutions_keep_the_backends_and_only_two_empty_answers_empty_the_pool() {
    let b = backends_on_one_port(2).await;
    let all: Vec<&TestBackend> = b.iter().collect();
    let dns = TestDns::start(1).await;
    dns.set_addrs(NAME, &ips(&all));
    let section = format!(
        "dns = \"{NAME}:{}\"\nmin_interval = \"100ms\"\nmax_interval = \"500ms\"",
        b[0].addr.port()
    );
    let d = start_daemon(&discovery_config("round-robin", &dns, &section, "")).await;
    let want = names(&all);
    assert_eq!(active(&d), want);
    let failed = |d: &Daemon| d.shared().discovery.views()["web"].status.resolutions[1];

    for mode in [Mode::ServFail, Mode::Refused] {
        dns.set_mode(mode);
        let f0 = failed(&d);
        assert!(wait_until(DEADLINE, || async { failed(&d) >= f0 + 2 }).await);
        assert_eq!(active(&d), want, "{mode:?} changed the backends");
    }
    let views = d.shared().discovery.views();
    assert!(views["web"].status.last_error.is_some());

    dns.set_mode(Mode::Answer);
    dns.remove(NAME);
    assert!(
        wait_until(DEADLINE, || async { table(&d).is_empty() }).await,
        "two NXDOMAIN answers in a row empty the pool"
    );
    assert!(d.shared().discovery.views()["web"].status.resolutions[2] >= 2);
    assert_eq!(get(addr(&d), "/").await.status, 503);

    dns.set_addrs(NAME, &ips(&all));
    follows(&d, &want).await;
    dns.stop();
    let (f0, t0) = (failed(&d), Instant::now());
    // A question to a silent server times out (2 s): rounds fail for longer than
    // max_interval (500 ms).
    assert!(wait_until(4 * DEADLINE, || async { failed(&d) >= f0 + 2 }).await);
    assert!(t0.elapsed() > Duration::from_secs(1));
    assert_eq!(
        active(&d),
        want,
        "an unreachable resolver changed the backends"
    );
    let mut client = Client::connect(addr(&d)).await;
    for _ in 0..10 {
        assert_eq!(client.get("/", &[]).await.status, 200);
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_discovered_backend_waits_for_its_first_passing_check() {
    let b = backends_on_one_port(2).await;
    let all: Vec<&TestBackend> = b.iter().collect();
    b[1].health.store(503, Ordering::SeqCst);
    let dns = TestDns::start(1).await;
    dns.set_addrs(NAME, &[b[0].addr.ip()]);
    let section = format!(
        "dns = \"{NAME}:{}\"\nmin_interval = \"100ms\"",
        b[0].addr.port()
    );
    let health = "[pool.web.health]\ninterval = \"100ms\"\nrise = 1\nfall = 1";
    let d = start_daemon(&discovery_config("round-robin", &dns, &section, health)).await;
    dns.set_addrs(NAME, &ips(&all));
    let newcomer = b[1].addr.to_string();
    assert!(wait_until(DEADLINE, || async { table(&d).contains_key(&newcomer) }).await);
    let mut client = Client::connect(addr(&d)).await;
    for _ in 0..20 {
        assert_eq!(
            client.get("/", &[]).await.body.trim(),
            format!("backend {}", b[0].name)
        );
    }
    b[1].health.store(200, Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || async {
            get(addr(&d), "/").await.body.trim() == format!("backend {}", b[1].name)
        })
        .await,
        "the newcomer never took work after passing its check"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// A WebSocket through the daemon, with `cookie`; answers `"NAME: text"`.
async fn websocket(
    d: &Daemon,
    cookie: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr(d)).await.unwrap();
    let req = ws_request(addr(d), Some(cookie));
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

async fn echo(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    text: &str,
) -> Option<String> {
    ws.send(text.into()).await.ok()?;
    let reply = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .ok()??
        .ok()?;
    reply.into_text().ok().map(|t| t.to_string())
}

fn cookie_section(port: u16, drain_timeout: &str) -> String {
    format!(
        "dns = \"{NAME}:{port}\"\nmin_interval = \"100ms\"\nmax_interval = \"1s\"\ndrain_timeout = \"{drain_timeout}\""
    )
}

const AFFINITY: &str = "[pool.web.affinity]\ncookie = \"s\"";

#[tokio::test]
async fn a_backend_gone_from_dns_keeps_its_cookie_clients_and_websockets_until_they_leave() {
    let b = backends_on_one_port(2).await;
    let all: Vec<&TestBackend> = b.iter().collect();
    let dns = TestDns::start(1).await;
    dns.set_addrs(NAME, &ips(&all));
    let section = cookie_section(b[0].addr.port(), "5m");
    // Pinned clients bind the backend until none was seen for a window (DESIGN §10).
    let extra = format!("pinned_window = \"2s\"\n{AFFINITY}");
    let d = start_daemon(&discovery_config("cookie-affinity", &dns, &section, &extra)).await;
    let leaving = format!("backend {}", b[1].name);

    // 100 clients, each with its cookie; those of the leaving backend, and 5 WebSockets.
    let mut clients = Vec::new();
    for _ in 0..100 {
        let r = get(addr(&d), "/").await;
        let cookie = r.headers["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        clients.push((cookie, r.body.trim().to_string()));
    }
    let pinned: Vec<&String> = clients
        .iter()
        .filter(|(_, home)| *home == leaving)
        .map(|(c, _)| c)
        .collect();
    assert!(
        pinned.len() >= 20,
        "{} of 100 on the leaving backend",
        pinned.len()
    );
    let mut sockets = Vec::new();
    for c in pinned.iter().take(5) {
        sockets.push(websocket(&d, c).await);
    }

    dns.set_addrs(NAME, &[b[0].addr.ip()]);
    let left = b[1].addr.to_string();
    assert!(
        wait_until(DEADLINE, || async {
            table(&d).get(&left) == Some(&AdminState::Drain)
        })
        .await,
        "{:?}",
        table(&d)
    );
    let mut client = Client::connect(addr(&d)).await;
    for c in &pinned {
        let r = client.get("/", &[("cookie", c.as_str())]).await;
        assert_eq!(
            r.body.trim(),
            leaving,
            "a pinned client moved while draining"
        );
    }
    for _ in 0..30 {
        let r = client.get("/", &[]).await;
        assert_ne!(
            r.body.trim(),
            leaving,
            "a draining backend took a new client"
        );
    }
    for ws in &mut sockets {
        let reply = echo(ws, "still there").await;
        assert_eq!(
            reply.as_deref(),
            Some(format!("{}: still there", b[1].name).as_str())
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(table(&d).contains_key(&left), "removed with tunnels open");

    for mut ws in sockets {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let closed = std::time::Instant::now();
    assert!(
        wait_until(DEADLINE, || async { !table(&d).contains_key(&left) }).await,
        "nothing bound any more, yet not removed"
    );
    assert!(
        closed.elapsed() >= Duration::from_millis(500),
        "removed while its pinned clients were within pinned_window"
    );
    let r = client.get("/", &[("cookie", pinned[0].as_str())]).await;
    assert_eq!(r.body.trim(), format!("backend {}", b[0].name));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

/// A backend with an open WebSocket leaves DNS; with `section`, it is removed and the
/// tunnel closed within the deadline.
async fn leaving_backend_is_removed_and_its_tunnel_closed(section: impl Fn(u16) -> String) {
    let b = backends_on_one_port(2).await;
    let all: Vec<&TestBackend> = b.iter().collect();
    let dns = TestDns::start(1).await;
    dns.set_addrs(NAME, &ips(&all));
    let section = section(b[0].addr.port());
    let d = start_daemon(&discovery_config(
        "cookie-affinity",
        &dns,
        &section,
        AFFINITY,
    ))
    .await;
    let leaving = format!("backend {}", b[1].name);
    let cookie = loop {
        let r = get(addr(&d), "/").await;
        if r.body.trim() == leaving {
            let c = r.headers["set-cookie"].to_str().unwrap();
            break c.split(';').next().unwrap().to_string();
        }
    };
    let mut ws = websocket(&d, &cookie).await;
    assert!(echo(&mut ws, "hi").await.is_some());
    dns.set_addrs(NAME, &[b[0].addr.ip()]);
    let left = b[1].addr.to_string();
    assert!(
        wait_until(DEADLINE, || async { !table(&d).contains_key(&left) }).await,
        "not removed"
    );
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the tunnel to the removed backend stayed open"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn drain_timeout_removes_the_backend_and_closes_its_tunnels() {
    leaving_backend_is_removed_and_its_tunnel_closed(|port| cookie_section(port, "1s")).await;
}

#[tokio::test]
async fn removal_remove_takes_the_backend_out_at_once_and_closes_its_tunnels() {
    leaving_backend_is_removed_and_its_tunnel_closed(|port| {
        format!("{}\nremoval = \"remove\"", cookie_section(port, "5m"))
    })
    .await;
}

#[tokio::test]
async fn a_hash_pool_scaled_from_5_to_6_moves_about_a_sixth_of_its_keys_and_says_so() {
    let b = backends_on_one_port(6).await;
    let all: Vec<&TestBackend> = b.iter().collect();
    let dns = TestDns::start(1).await;
    dns.set_addrs(NAME, &ips(&all[..5]));
    let section = format!(
        "dns = \"{NAME}:{}\"\nmin_interval = \"100ms\"",
        b[0].addr.port()
    );
    let toml = discovery_config("hash", &dns, &section, "key = \"header:x-key\"");
    let d = start_daemon(&toml).await;
    const KEYS: usize = 1000;
    let homes = |d: &Arc<Daemon>| {
        let target = addr(d);
        async move {
            let mut client = Client::connect(target).await;
            let mut out = Vec::with_capacity(KEYS);
            for k in 0..KEYS {
                let key = format!("user-{k}");
                out.push(client.get("/", &[("x-key", &key)]).await.body);
            }
            out
        }
    };
    let before = homes(&d).await;
    dns.set_addrs(NAME, &ips(&all));
    follows(&d, &names(&all)).await;
    let after = homes(&d).await;
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count() as f64 / KEYS as f64;
    let change = d.shared().discovery.views()["web"]
        .status
        .last_change
        .clone()
        .unwrap();
    assert_eq!(change.added, vec![b[5].addr.to_string()]);
    let estimate = change.sticky_moved.unwrap();
    assert!(estimate <= 1.15 / 6.0, "report says {estimate}");
    assert!(
        (moved - estimate).abs() < 0.05,
        "measured {moved}, reported {estimate}"
    );
    let line = change.line("web");
    eprintln!(
        "5 -> 6: {line}; measured on {KEYS} keys: {:.1}%",
        moved * 100.0
    );
    assert!(
        line.starts_with("discovery: pool web backends +1 -0, sticky moved: web "),
        "{line}"
    );
    assert!(line.contains(&format!("{:.1}%", estimate * 100.0)));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_reload_keeps_discovered_backends_and_resolves_again_only_when_the_section_changed() {
    let b = backends_on_one_port(2).await;
    let all: Vec<&TestBackend> = b.iter().collect();
    let dns = TestDns::start(300).await;
    dns.set_addrs(NAME, &ips(&all));
    let port = b[0].addr.port();
    let section = format!("dns = \"{NAME}:{port}\"\nmax_interval = \"5m\"");
    let dir = scratch_dir("discovery-reload");
    let path = dir.join("maitred.toml");
    std::fs::write(&path, discovery_config("round-robin", &dns, &section, "")).unwrap();
    let d = start_daemon_file(&path).await;
    let live_of = |d: &Daemon| {
        let snap = d.shared().live.load();
        Arc::clone(&snap.pool("web").unwrap().backends[0].live)
    };
    let first = live_of(&d);
    first.set_admin(AdminState::Disabled);
    let queries = dns.queries();

    let unchanged = discovery_config("round-robin", &dns, &section, "retries = 1");
    std::fs::write(&path, unchanged).unwrap();
    d.reload(false).await.unwrap();
    assert_eq!(table(&d).len(), 2);
    assert!(Arc::ptr_eq(&first, &live_of(&d)), "live state not carried");
    assert_eq!(first.admin(), AdminState::Disabled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        dns.queries(),
        queries,
        "resolved again though the section is the same"
    );

    let changed = format!("{section}\nweight = 4");
    std::fs::write(&path, discovery_config("round-robin", &dns, &changed, "")).unwrap();
    d.reload(false).await.unwrap();
    assert!(
        wait_until(DEADLINE, || async {
            let snap = d.shared().live.load();
            snap.pool("web")
                .unwrap()
                .backends
                .iter()
                .all(|b| b.weight == 4)
        })
        .await,
        "a changed section is resolved again"
    );
    assert!(dns.queries() > queries);
    assert!(Arc::ptr_eq(&first, &live_of(&d)));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn check_resolve_prints_what_dns_gives() {
    let dns = TestDns::start(30).await;
    dns.set_addrs(NAME, &[ip(2), ip(3)]);
    let dir = scratch_dir("discovery-check");
    let path = dir.join("maitred.toml");
    let section = format!("dns = \"{NAME}:8080\"");
    std::fs::write(&path, discovery_config("round-robin", &dns, &section, "")).unwrap();
    let bin = env!("CARGO_BIN_EXE_maitred");
    let run = |args: &'static [&'static str]| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .args(args)
                .arg(&path)
                .output()
                .unwrap()
        })
    };
    let out = run(&["check", "--resolve", "-c"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("discovery svc.test:8080"), "{stdout}");
    assert!(
        stdout.contains("pool web: svc.test:8080: 2 backends (ttl 30s): 127.0.0.2:8080 weight 1, 127.0.0.3:8080 weight 1"),
        "{stdout}"
    );
    dns.remove(NAME);
    let out = run(&["check", "--resolve", "-c"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("empty:"));
}

/// Every YAML document of an example file.
fn manifests(file: &str) -> Vec<serde_yaml::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/kubernetes")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

fn text<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> &'a str {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_str()
        .unwrap_or_else(|| panic!("{} missing in {v:?}", path.join(".")))
}

#[test]
fn kubernetes_examples_are_manifests_kubernetes_accepts_and_the_config_is_valid() {
    let deployments = manifests("deployment.yaml");
    let d = &deployments[0];
    assert_eq!(
        (text(d, &["apiVersion"]), text(d, &["kind"])),
        ("apps/v1", "Deployment")
    );
    text(d, &["metadata", "name"]);
    let selector = &d["spec"]["selector"]["matchLabels"];
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    assert!(selector.as_mapping().is_some_and(|m| !m.is_empty()));
    for (k, v) in selector.as_mapping().unwrap() {
        assert_eq!(
            &labels[k.as_str().unwrap()],
            v,
            "the selector matches the pod labels"
        );
    }
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    assert!(!containers.is_empty());
    for c in containers {
        text(c, &["name"]);
        text(c, &["image"]);
    }
    assert_eq!(
        text(&containers[0], &["readinessProbe", "httpGet", "path"]),
        "/status"
    );

    let services = manifests("service.yaml");
    assert_eq!(services.len(), 2);
    for s in &services {
        assert_eq!(
            (text(s, &["apiVersion"]), text(s, &["kind"])),
            ("v1", "Service")
        );
        text(s, &["metadata", "name"]);
        let ports = s["spec"]["ports"].as_sequence().unwrap();
        assert!(ports.iter().all(|p| p["port"].as_u64().is_some()));
    }
    let headless = &services[0];
    assert_eq!(text(headless, &["spec", "clusterIP"]), "None");

    let maps = manifests("configmap.yaml");
    let m = &maps[0];
    assert_eq!(
        (text(m, &["apiVersion"]), text(m, &["kind"])),
        ("v1", "ConfigMap")
    );
    text(m, &["metadata", "name"]);
    let toml = text(m, &["data", "maitred.toml"]);
    let cfg = maitred::config::parse(toml, "configmap maitred.toml", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let api = cfg.pool("api").unwrap();
    let dns_name = match &api.discovery.as_ref().unwrap().target {
        maitred::config::DiscoveryTarget::Dns { name, .. } => name.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        dns_name,
        format!(
            "{}.{}.svc.cluster.local",
            text(headless, &["metadata", "name"]),
            text(headless, &["metadata", "namespace"])
        ),
        "the config asks for the headless Service's name"
    );
    let volume = &d["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"];
    assert_eq!(volume.as_str(), Some(text(m, &["metadata", "name"])));
}
