//! A reload changes nothing until its single swap (DESIGN §1, §7): a dry run, or a
//! reload that fails after the new snapshot is built (a listener or the admin listener
//! that cannot bind), leaves backend states and the admin listener as they were.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::{head, pool_toml, q, with_admin, write};
use crate::common::*;

/// Pool `web` of `a` and `b`, with `b` in `b_state`, behind `main` and an admin listener
/// on `admin_bind`.
fn two_backends(a: &TestBackend, b: &TestBackend, b_state: &str, admin_bind: &str) -> String {
    let b = format!("{{ addr = {}, state = \"{b_state}\" }}", q(b));
    with_admin(&(head(&[("main", "web")]) + &pool_toml("web", "round-robin", &[q(a), b], "")))
        .replace(
            "bind = \"127.0.0.1:0\"\n\n[[listener]]",
            &format!("bind = \"{admin_bind}\"\n\n[[listener]]"),
        )
}

/// A client of the admin listener at `admin`, with that address as Host.
async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> Reply {
    let host = admin.to_string();
    Client::connect(admin)
        .await
        .send(method, path, &[("host", &host)], bytes::Bytes::new())
        .await
        .unwrap()
}

async fn state_of(admin: SocketAddr, backend: &TestBackend) -> String {
    let r = admin_request(admin, "GET", "/status").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s: Value = serde_json::from_str(&r.body).unwrap();
    s["pools"]["web"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["addr"] == backend.addr.to_string())
        .map(|x| x["state"].as_str().unwrap().to_string())
        .unwrap()
}

/// Sends `n` requests and returns how many `backend` answered.
async fn hits_on(d: &maitred::app::Daemon, backend: &TestBackend, n: usize) -> usize {
    let before = backend.hits();
    let mut c = Client::connect(addr(d)).await;
    for _ in 0..n {
        assert_eq!(c.get("/", &[]).await.status, 200);
    }
    backend.hits() - before
}

async fn start(path: &Path, text: &str) -> std::sync::Arc<maitred::app::Daemon> {
    write(path, text);
    start_daemon_file(path).await
}

#[tokio::test]
async fn dry_run_with_a_disabled_state_leaves_the_backend_serving() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let path = scratch_dir("reload-dry-state").join("maitred.toml");
    let d = start(&path, &two_backends(&a, &b, "active", "127.0.0.1:0")).await;
    let admin = d.admin_addr().unwrap();
    write(&path, &two_backends(&a, &b, "disabled", "127.0.0.1:0"));

    let dry = admin_request(admin, "POST", "/reload?dry_run=true").await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(
        serde_json::from_str::<Value>(&dry.body).unwrap()["applied"],
        false
    );
    assert_eq!(state_of(admin, &b).await, "active", "a dry run disabled it");
    assert_eq!(
        hits_on(&d, &b, 10).await,
        5,
        "a dry run took it out of rotation"
    );

    let real = admin_request(admin, "POST", "/reload").await;
    assert_eq!(real.status, 200, "{}", real.body);
    assert_eq!(state_of(admin, &b).await, "disabled");
    assert_eq!(hits_on(&d, &b, 10).await, 0);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn reload_failing_on_a_bind_leaves_backend_states_unchanged() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let path = scratch_dir("reload-bind-state").join("maitred.toml");
    let d = start(&path, &two_backends(&a, &b, "active", "127.0.0.1:0")).await;
    let admin = d.admin_addr().unwrap();
    let listener_on_busy_port =
        format!("\n[[listener]]\nname = \"extra\"\nbind = \"{busy_addr}\"\npool = \"web\"\n");
    write(
        &path,
        &(two_backends(&a, &b, "disabled", "127.0.0.1:0") + &listener_on_busy_port),
    );

    let failed = admin_request(admin, "POST", "/reload").await;
    assert_eq!(failed.status, 422, "{}", failed.body);
    assert!(failed.body.contains("extra"), "{}", failed.body);
    assert_eq!(d.shared().reloads_failed.load(Ordering::SeqCst), 1);
    assert_eq!(
        state_of(admin, &b).await,
        "active",
        "a failed reload disabled it"
    );
    assert_eq!(
        hits_on(&d, &b, 10).await,
        5,
        "a failed reload took it out of rotation"
    );
    assert!(d.listener_addr("extra").is_none());
    drop(busy);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn admin_moved_to_a_busy_port_fails_the_reload_and_keeps_serving() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let path = scratch_dir("reload-admin-busy").join("maitred.toml");
    let d = start(&path, &two_backends(&a, &b, "active", "127.0.0.1:0")).await;
    let admin = d.admin_addr().unwrap();
    write(
        &path,
        &two_backends(&a, &b, "disabled", &busy_addr.to_string()),
    );

    let failed = admin_request(admin, "POST", "/reload").await;
    assert_eq!(failed.status, 422, "{}", failed.body);
    let body: Value = serde_json::from_str(&failed.body).unwrap();
    assert_eq!(body["applied"], false);
    let error = body["errors"][0].as_str().unwrap();
    assert!(
        error.contains("admin") && error.contains(&busy_addr.to_string()),
        "{error}"
    );
    assert_eq!(
        d.admin_addr(),
        Some(admin),
        "the admin listener moved anyway"
    );
    let metrics = admin_request(admin, "GET", "/metrics").await;
    assert_eq!(
        metrics.status, 200,
        "the old admin listener stopped serving"
    );
    assert!(
        metrics
            .body
            .contains("maitred_reloads_total{result=\"failed\"} 1\n"),
        "{}",
        metrics.body
    );
    assert_eq!(
        state_of(admin, &b).await,
        "active",
        "half of the reload applied"
    );
    drop(busy);

    // A move to a free address works: the new listener answers, the old one goes.
    write(&path, &two_backends(&a, &b, "active", "127.0.0.2:0"));
    let moved = admin_request(admin, "POST", "/reload").await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    let new_admin = d.admin_addr().unwrap();
    assert_eq!(new_admin.ip().to_string(), "127.0.0.2");
    assert_eq!(admin_request(new_admin, "GET", "/status").await.status, 200);
    assert!(
        wait_until(DEADLINE, || async {
            tokio::net::TcpStream::connect(admin).await.is_err()
        })
        .await,
        "the old admin listener still accepts"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}
