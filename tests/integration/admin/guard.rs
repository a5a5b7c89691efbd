//! The admin listener's guard against web pages (DESIGN §3 `[admin] allowed_hosts`): a
//! Host it does not answer for is refused on every endpoint (DNS rebinding), and a POST
//! whose Origin is another site is refused before it changes anything (CSRF), while
//! curl-style requests and the dashboard's own same-origin buttons keep working.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::{admin_addr, admin_config, admin_get, admin_send, backend_state, status};
use crate::common::*;

#[tokio::test]
async fn admin_refuses_a_host_it_does_not_answer_for() {
    let a = TestBackend::start("a").await;
    let toml = admin_config(&[&a], None) + "allowed_hosts = [\"lb1.internal\"]\n";
    let d = start_daemon(&toml).await;
    let admin = admin_addr(&d);
    let port = admin.port();
    for path in ["/", "/status", "/metrics"] {
        for host in ["evil.example", &format!("evil.example:{port}"), "127.0.0.2"] {
            let r = admin_send(&d, "GET", path, &[("host", host)]).await;
            assert_eq!(r.status, 421, "GET {path} with Host {host}: {}", r.body);
            assert!(!r.body.contains("pools"), "{}", r.body);
        }
    }
    for host in [
        admin.to_string(),
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        format!("LOCALHOST:{port}"),
        "lb1.internal".to_string(),
        format!("Lb1.Internal:{port}"),
    ] {
        let r = admin_send(&d, "GET", "/status", &[("host", &host)]).await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.body);
    }
    let http10 = raw(
        admin,
        b"GET /status HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        http10.starts_with("HTTP/1.0 200") || http10.starts_with("HTTP/1.1 200"),
        "HTTP/1.0 without Host is no browser's: {http10}"
    );
    let http11 = raw(
        admin,
        b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(http11.starts_with("HTTP/1.1 400"), "{http11}");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn cross_origin_post_is_refused_and_changes_nothing() {
    let a = TestBackend::start("a").await;
    let dir = scratch_dir("admin-csrf");
    let path = dir.join("maitred.toml");
    std::fs::write(&path, admin_config(&[&a], None)).unwrap();
    let d = start_daemon_file(&path).await;
    let host = admin_addr(&d).to_string();
    let disable = format!("/pools/web/backends/{}/disable", a.addr);
    // What a form or fetch on another site sends: a "simple" text/plain POST.
    let from_page = |origin: &'static str| {
        [
            ("origin", origin),
            ("content-type", "text/plain"),
            ("sec-fetch-site", "cross-site"),
        ]
    };
    for target in [disable.as_str(), "/reload"] {
        for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
            let mut headers = vec![("host", host.as_str())];
            headers.extend(from_page(origin));
            let r = admin_send(&d, "POST", target, &headers).await;
            assert_eq!(r.status, 403, "POST {target} from {origin}: {}", r.body);
            assert!(r.body.contains("cross-origin"), "{}", r.body);
        }
        // DNS rebinding: the page's own origin, but under a name that is not ours.
        let mut headers = vec![("host", "evil.example")];
        headers.extend(from_page("http://evil.example"));
        let r = admin_send(&d, "POST", target, &headers).await;
        assert_eq!(r.status, 421, "rebound POST {target}: {}", r.body);
    }
    assert_eq!(backend_state(&status(&d).await, "web", a.addr), "active");
    assert_eq!(d.shared().reloads_ok.load(Ordering::SeqCst), 0);
    assert_eq!(d.shared().reloads_failed.load(Ordering::SeqCst), 0);
    assert_eq!(get(addr(&d), "/").await.status, 200);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn dashboard_buttons_same_origin_post_still_works() {
    let a = TestBackend::start("a").await;
    let d = start_daemon(&admin_config(&[&a], None)).await;
    let host = admin_addr(&d).to_string();
    let origin = format!("http://{host}");
    // What a browser sends for the dashboard's `fetch(url, {method: "POST"})`.
    let headers = [
        ("host", host.as_str()),
        ("origin", origin.as_str()),
        ("sec-fetch-site", "same-origin"),
        ("referer", &format!("{origin}/")),
    ];
    let drain = format!("/pools/web/backends/{}/drain", a.addr);
    let r = admin_send(&d, "POST", &drain, &headers).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["state"], "drain");
    let localhost = format!("localhost:{}", admin_addr(&d).port());
    let origin = format!("http://{localhost}");
    let enable = format!("/pools/web/backends/{}/enable", a.addr);
    let r = admin_send(
        &d,
        "POST",
        &enable,
        &[("host", &localhost), ("origin", &origin)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backend_state(&status(&d).await, "web", a.addr), "active");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn wildcard_bind_answers_for_the_address_the_connection_reached() {
    let a = TestBackend::start("a").await;
    let toml = admin_config(&[&a], Some("t")).replace(
        "bind = \"127.0.0.1:0\"\ntoken",
        "bind = \"0.0.0.0:0\"\ntoken",
    );
    assert!(toml.contains("0.0.0.0:0"), "{toml}");
    let d = start_daemon(&toml).await;
    let port = admin_addr(&d).port();
    let reached = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = Client::connect(reached).await;
    let ok = c.get("/status", &[("host", &reached.to_string())]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    for host in ["0.0.0.0", "evil.example", &format!("10.255.255.1:{port}")] {
        let r = Client::connect(reached)
            .await
            .get("/status", &[("host", host)])
            .await;
        assert_eq!(r.status, 421, "Host {host}: {}", r.body);
    }
    assert_eq!(
        admin_get(&d, "/metrics").await.status,
        421,
        "Host 0.0.0.0:PORT"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}
