//! Hot reload: nothing a client does may notice, except the new config.

mod safety;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use maitred::backend::Health;

use crate::common::*;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn pool_toml(name: &str, balancer: &str, backends: &[String], extra: &str) -> String {
    format!(
        "\n[pool.{name}]\nbalancer = \"{balancer}\"\nbackends = [{}]\n{extra}\n",
        backends.join(", ")
    )
}

fn head(listeners: &[(&str, &str)]) -> String {
    let mut s = String::from("[server]\nthreads = 2\naccess_log = \"off\"\nlog_level = \"warn\"\n");
    for (name, pool) in listeners {
        s.push_str(&format!(
            "\n[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\npool = \"{pool}\"\n"
        ));
    }
    s
}

/// One listener, `main`, in front of pool `web`.
fn web_pool(balancer: &str, backends: &[String], extra: &str) -> String {
    head(&[("main", "web")]) + &pool_toml("web", balancer, backends, extra)
}

fn q(b: &TestBackend) -> String {
    format!("\"{}\"", b.addr)
}

#[tokio::test]
async fn twenty_reloads_under_load_drop_nothing() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let dir = scratch_dir("reload-load");
    let path = dir.join("maitred.toml");
    let all: Vec<String> = backends.iter().map(q).collect();
    write(&path, &web_pool("round-robin", &all, ""));
    let d = start_daemon_file(&path).await;
    let target = addr(&d);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(target).await;
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                match c.send("GET", "/", &[], bytes::Bytes::new()).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => {
                        c = Client::connect(target).await;
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    for i in 0..20 {
        // Alternate weights, balancers and the backend set.
        let text = match i % 4 {
            0 => pool_toml("web", "least-connections", &all, ""),
            1 => pool_toml("web", "round-robin", &all[..2], ""),
            2 => pool_toml(
                "web",
                "round-robin",
                &[
                    all[0].clone(),
                    format!("{{ addr = {}, weight = 5 }}", all[1]),
                    all[2].clone(),
                ],
                "",
            ),
            _ => pool_toml("web", "round-robin", &all, ""),
        };
        write(&path, &(head(&[("main", "web")]) + &text));
        let before = ok.load(Ordering::SeqCst);
        d.reload(false).await.unwrap();
        assert!(
            wait_until(DEADLINE, || async {
                ok.load(Ordering::SeqCst) > before + 20
            })
            .await
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed across reloads"
    );
    assert!(ok.load(Ordering::SeqCst) > 400);
    assert_eq!(d.shared().reloads_ok.load(Ordering::SeqCst), 20);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn slow_request_survives_a_reload_that_removes_its_backend() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("reload-slow");
    let path = dir.join("maitred.toml");
    write(&path, &web_pool("round-robin", &[q(&a)], ""));
    let d = start_daemon_file(&path).await;
    let target = addr(&d);
    let slow = tokio::spawn(async move { get(target, "/slow?ms=1500").await });
    assert!(wait_until(DEADLINE, || async { a.hits() == 1 }).await);
    write(&path, &web_pool("round-robin", &[q(&b)], ""));
    let report = d.reload(false).await.unwrap();
    assert_eq!(report.backends.removed.len(), 1);
    assert_eq!(get(target, "/").await.body, "backend b\n");
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "backend a\n"));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn bad_file_on_reload_keeps_the_old_config_serving() {
    let a = TestBackend::start("a").await;
    let dir = scratch_dir("reload-bad");
    let path = dir.join("maitred.toml");
    write(&path, &web_pool("round-robin", &[q(&a)], ""));
    let d = start_daemon_file(&path).await;
    write(&path, &web_pool("round_robin", &[q(&a)], ""));
    let err = d.reload(false).await.unwrap_err();
    let msgs = err.messages();
    assert!(
        msgs[0].contains("maitred.toml:") && msgs[0].contains("unknown balancer"),
        "{msgs:?}"
    );
    write(&path, "this is = = not toml");
    assert!(d.reload(false).await.is_err());
    assert_eq!(get(addr(&d), "/").await.body, "backend a\n");
    assert_eq!(d.shared().reloads_failed.load(Ordering::SeqCst), 2);
    assert_eq!(d.shared().reloads_ok.load(Ordering::SeqCst), 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn listeners_added_removed_and_rebound() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("reload-listeners");
    let path = dir.join("maitred.toml");
    let pools = pool_toml("web", "round-robin", &[q(&a)], "")
        + &pool_toml("other", "round-robin", &[q(&b)], "");
    write(&path, &(head(&[("main", "web")]) + &pools));
    let d = start_daemon_file(&path).await;
    let first = addr(&d);
    // A keep-alive client of the listener about to go.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut kept = tokio::net::TcpStream::connect(first).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(kept.read(&mut buf).await.unwrap() > 0);
    write(&path, &(head(&[("second", "other")]) + &pools));
    let report = d.reload(false).await.unwrap();
    assert_eq!(report.listeners.added, vec!["second".to_string()]);
    assert_eq!(report.listeners.removed, vec!["main".to_string()]);
    let second = d.listener_addr("second").unwrap();
    assert_eq!(get(second, "/").await.body, "backend b\n");
    assert!(d.listener_addr("main").is_none());
    assert!(
        wait_until(DEADLINE, || async {
            tokio::net::TcpStream::connect(first).await.is_err()
        })
        .await,
        "removed listener still accepts"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn down_backend_stays_down_across_a_reload() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("reload-down");
    let path = dir.join("maitred.toml");
    // With fall = 1, one probe slowed by a loaded machine must not take `b` down too.
    let checks = "[pool.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"2s\"\nrise = 3\nfall = 1\n";
    write(&path, &web_pool("round-robin", &[q(&a), q(&b)], checks));
    let d = start_daemon_file(&path).await;
    a.health.store(500, Ordering::SeqCst);
    let down = || {
        let snap = d.shared().live.load();
        let name = a.addr.to_string();
        snap.pool("web")
            .unwrap()
            .backends
            .iter()
            .find(|x| *x.name == *name)
            .unwrap()
            .live
            .health()
            == Health::Down
    };
    assert!(wait_until(DEADLINE, || async { down() }).await);
    write(
        &path,
        &(head(&[("main", "web")])
            + &pool_toml("web", "least-connections", &[q(&a), q(&b)], checks)),
    );
    d.reload(false).await.unwrap();
    assert!(down(), "reload brought a down backend back");
    for _ in 0..10 {
        assert_eq!(get(addr(&d), "/").await.body, "backend b\n");
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn weight_change_takes_effect() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("reload-weight");
    let path = dir.join("maitred.toml");
    write(&path, &web_pool("round-robin", &[q(&a), q(&b)], ""));
    let d = start_daemon_file(&path).await;
    let weighted = format!("{{ addr = \"{}\", weight = 4 }}", b.addr);
    write(&path, &web_pool("round-robin", &[q(&a), weighted], ""));
    let report = d.reload(false).await.unwrap();
    assert_eq!(report.backends.changed, vec![format!("web/{}", b.addr)]);
    let (a0, b0) = (a.hits(), b.hits());
    let mut c = Client::connect(addr(&d)).await;
    for _ in 0..100 {
        c.get("/", &[]).await;
    }
    assert_eq!((a.hits() - a0, b.hits() - b0), (20, 80));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn dry_run_changes_nothing_and_matches_the_real_reload() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("reload-dry");
    let path = dir.join("maitred.toml");
    write(&path, &web_pool("round-robin", &[q(&a)], ""));
    let d = start_daemon_file(&path).await;
    write(&path, &web_pool("round-robin", &[q(&b)], ""));
    let dry = d.reload(true).await.unwrap();
    for _ in 0..5 {
        assert_eq!(get(addr(&d), "/").await.body, "backend a\n");
    }
    assert_eq!(d.shared().reloads_ok.load(Ordering::SeqCst), 0);
    let real = d.reload(false).await.unwrap();
    assert_eq!(dry, real);
    assert_eq!(get(addr(&d), "/").await.body, "backend b\n");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

fn with_admin(body: &str) -> String {
    body.replacen(
        "log_level = \"warn\"\n",
        "log_level = \"warn\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
        1,
    )
}

#[tokio::test]
async fn admin_reload_answers_with_the_report_and_refuses_bad_files() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = scratch_dir("reload-admin");
    let path = dir.join("maitred.toml");
    let sticky = |list: &[String]| pool_toml("sessions", "hash", list, "key = \"cookie:sid\"");
    write(
        &path,
        &with_admin(
            &(head(&[("main", "web")])
                + &pool_toml("web", "round-robin", &[q(&a)], "")
                + &sticky(&[q(&a)])),
        ),
    );
    let d = start_daemon_file(&path).await;
    let admin = d.admin_addr().unwrap();
    let host = admin.to_string();
    write(
        &path,
        &with_admin(
            &(head(&[("main", "web")])
                + &pool_toml("web", "round-robin", &[q(&b)], "")
                + &sticky(&[q(&a), q(&b)])),
        ),
    );
    let mut c = Client::connect(admin).await;
    let dry = c
        .send(
            "POST",
            "/reload?dry_run=true",
            &[("host", &host)],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(dry.status, 200, "{}", dry.body);
    let dry: serde_json::Value = serde_json::from_str(&dry.body).unwrap();
    assert_eq!(dry["applied"], false);
    assert_eq!(
        get(addr(&d), "/").await.body,
        "backend a\n",
        "dry run applied something"
    );
    let report = &dry["report"];
    assert_eq!(
        report["backends"]["added"],
        serde_json::json!([format!("sessions/{}", b.addr), format!("web/{}", b.addr)])
    );
    assert_eq!(
        report["pools"]["changed"],
        serde_json::json!(["sessions", "web"])
    );
    let moved = report["sticky_moved"]["sessions"].as_f64().unwrap();
    assert!((0.3..0.7).contains(&moved), "1 → 2 backends moved {moved}");
    assert!(
        report["sticky_moved"].get("web").is_none(),
        "round-robin pools have no entry"
    );

    let real = c
        .send("POST", "/reload", &[("host", &host)], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(real.status, 200);
    let real: serde_json::Value = serde_json::from_str(&real.body).unwrap();
    assert_eq!(real["applied"], true);
    assert_eq!(
        real["report"], dry["report"],
        "the real reload reports what the dry run did"
    );
    assert_eq!(get(addr(&d), "/").await.body, "backend b\n");

    write(
        &path,
        "[[listener]]\nname = 1\n\n[pool.x]\nbalancer = \"nope\"\nbackends = []\n",
    );
    let bad = c
        .send("POST", "/reload", &[("host", &host)], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(bad.status, 422);
    let bad: serde_json::Value = serde_json::from_str(&bad.body).unwrap();
    assert_eq!(bad["applied"], false);
    let first = bad["errors"][0].as_str().unwrap();
    assert!(first.contains("maitred.toml:2:"), "{first}");
    assert_eq!(
        get(addr(&d), "/").await.body,
        "backend b\n",
        "a bad file changed what is served"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn backend_added_to_a_checked_pool_waits_for_its_first_pass() {
    let (a, healthy, sick) = (
        TestBackend::start("a").await,
        TestBackend::start("new").await,
        TestBackend::start("sick").await,
    );
    sick.health.store(500, Ordering::SeqCst);
    let dir = scratch_dir("reload-new-checked");
    let path = dir.join("maitred.toml");
    let checks = "[pool.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
    write(&path, &web_pool("round-robin", &[q(&a)], checks));
    let d = start_daemon_file(&path).await;
    write(
        &path,
        &(head(&[("main", "web")])
            + &pool_toml(
                "web",
                "round-robin",
                &[q(&a), q(&healthy), q(&sick)],
                checks,
            )),
    );
    d.reload(false).await.unwrap();
    assert!(
        wait_until(DEADLINE, || async {
            get(addr(&d), "/").await.body == "backend new\n"
        })
        .await,
        "a passing new backend never took traffic"
    );
    for _ in 0..12 {
        get(addr(&d), "/").await;
    }
    assert_eq!(
        sick.hits(),
        0,
        "a new backend that never passed a check took traffic"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}
