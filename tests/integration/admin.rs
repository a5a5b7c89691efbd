//! The admin listener (DESIGN §7): the status document's shape, bearer-token handling,
//! runtime drain / disable / enable and what they do to traffic (DESIGN §5), 404s, and
//! the config rule for a non-loopback admin bind. The metrics exposition and the
//! dashboard in a headless browser have their own files below.

mod dashboard;
mod guard;
mod metrics;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::common::*;

/// `simple_config` plus an admin listener on a free loopback port.
pub fn admin_config(backends: &[&TestBackend], token: Option<&str>) -> String {
    let token = token
        .map(|t| format!("token = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n{token}",
        simple_config("round-robin", backends, "")
    )
}

pub fn admin_addr(d: &maitred::app::Daemon) -> SocketAddr {
    d.admin_addr().expect("admin listener is running")
}

/// A GET to the admin listener, with its address as Host (as curl sends it).
pub async fn admin_get(d: &maitred::app::Daemon, path: &str) -> Reply {
    let host = admin_addr(d).to_string();
    Client::connect(admin_addr(d))
        .await
        .get(path, &[("host", &host)])
        .await
}

/// A POST to the admin listener, with its address as Host and no Origin (as curl).
pub async fn admin_post(d: &maitred::app::Daemon, path: &str, auth: Option<&str>) -> Reply {
    let host = admin_addr(d).to_string();
    let mut headers = vec![("host", host.as_str())];
    headers.extend(auth.map(|a| ("authorization", a)));
    admin_send(d, "POST", path, &headers).await
}

/// Any request to the admin listener, with exactly the headers given.
pub async fn admin_send(
    d: &maitred::app::Daemon,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    Client::connect(admin_addr(d))
        .await
        .send(method, path, headers, Bytes::new())
        .await
        .unwrap()
}

pub async fn status(d: &maitred::app::Daemon) -> Value {
    let r = admin_get(d, "/status").await;
    assert_eq!(r.status, 200);
    serde_json::from_str(&r.body).unwrap()
}

pub fn backend_state(status: &Value, pool: &str, addr: SocketAddr) -> String {
    status["pools"][pool]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr.to_string())
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap()
}

pub async fn send_n(d: &maitred::app::Daemon, n: usize) -> Vec<u16> {
    let mut client = Client::connect(addr(d)).await;
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(client.get("/", &[]).await.status);
    }
    statuses
}

#[tokio::test]
async fn status_json_has_the_design_shape() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&admin_config(&[&a, &b], None)).await;
    assert!(send_n(&d, 4).await.iter().all(|&s| s == 200));
    let s = status(&d).await;

    let web = &s["pools"]["web"];
    assert_eq!(web["balancer"], "round-robin");
    assert_eq!(web["backends_total"], 2);
    assert_eq!(web["backends_up"], 2);
    let backends = web["backends"].as_array().unwrap();
    let addrs: Vec<&str> = backends
        .iter()
        .map(|b| b["addr"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, [a.addr.to_string(), b.addr.to_string()]);
    for be in backends {
        assert_eq!(be["health"], "up");
        assert_eq!(be["state"], "active");
        assert_eq!(be["weight"], 1);
        assert_eq!(be["ejected"], false);
        for key in ["in_flight", "requests", "errors"] {
            assert!(be[key].is_u64(), "{key} is a number in {be}");
        }
        assert_eq!(be["requests"], 2, "round-robin split 4 requests 2:2");
        assert_eq!(be["errors"], 0);
        assert_eq!(be["responses"]["2xx"], 2);
        assert!(be["last_check"].is_null(), "no health checks configured");
    }
    let listeners = s["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["name"], "main");
    assert_eq!(listeners[0]["pool"], "web");
    assert_eq!(listeners[0]["local_addr"], addr(&d).to_string());
    assert!(listeners[0]["routes"].as_array().unwrap().is_empty());
    assert_eq!(s["admin"]["token_required"], false);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn mutating_endpoints_need_the_bearer_token() {
    let a = TestBackend::start("a").await;
    let d = start_daemon(&admin_config(&[&a], Some("s3cret"))).await;
    for path in ["/", "/status", "/metrics"] {
        assert_eq!(
            admin_get(&d, path).await.status,
            200,
            "GET {path} needs no token"
        );
    }
    let drain = format!("/pools/web/backends/{}/drain", a.addr);
    let denied = admin_post(&d, &drain, None).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.headers["www-authenticate"], "Bearer");
    for wrong in ["Bearer nope", "Bearer s3cret2", "Basic s3cret", "s3cret"] {
        assert_eq!(
            admin_post(&d, &drain, Some(wrong)).await.status,
            401,
            "{wrong}"
        );
    }
    assert_eq!(
        admin_post(&d, "/reload?dry_run=true", None).await.status,
        401
    );
    assert_eq!(
        admin_post(&d, "/pools/nope/backends/x/drain", None)
            .await
            .status,
        401
    );
    assert_eq!(backend_state(&status(&d).await, "web", a.addr), "active");
    assert_eq!(status(&d).await["admin"]["token_required"], true);

    let ok = admin_post(&d, &drain, Some("Bearer s3cret")).await;
    assert_eq!(ok.status, 200);
    let v: Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(v["state"], "drain");
    assert_eq!(v["backend"], a.addr.to_string());
    assert_eq!(backend_state(&status(&d).await, "web", a.addr), "drain");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn drained_backend_gets_no_new_requests_and_enable_brings_it_back() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let d = start_daemon(&admin_config(&[&a, &b, &c], None)).await;
    let encoded = b.addr.to_string().replace(':', "%3A");
    let r = admin_post(&d, &format!("/pools/web/backends/{encoded}/drain"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backend_state(&status(&d).await, "web", b.addr), "drain");
    assert!(send_n(&d, 30).await.iter().all(|&s| s == 200));
    assert_eq!((a.hits(), b.hits(), c.hits()), (15, 0, 15));

    let r = admin_post(&d, &format!("/pools/web/backends/{}/enable", b.addr), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backend_state(&status(&d).await, "web", b.addr), "active");
    assert!(send_n(&d, 30).await.iter().all(|&s| s == 200));
    assert_eq!(b.hits(), 10, "enabled again, it takes its share");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn all_backends_disabled_answers_503_with_retry_after() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&admin_config(&[&a, &b], None)).await;
    for be in [&a, &b] {
        let r = admin_post(
            &d,
            &format!("/pools/web/backends/{}/disable", be.addr),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap()["state"],
            "disabled"
        );
    }
    let r = get(addr(&d), "/").await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(a.hits() + b.hits(), 0);
    assert_eq!(status(&d).await["pools"]["web"]["unavailable"], 1);

    assert_eq!(
        admin_post(&d, &format!("/pools/web/backends/{}/enable", a.addr), None)
            .await
            .status,
        200
    );
    assert_eq!(get(addr(&d), "/").await.status, 200);
    assert_eq!((a.hits(), b.hits()), (1, 0));
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn unknown_pool_backend_or_action_is_404() {
    let a = TestBackend::start("a").await;
    let d = start_daemon(&admin_config(&[&a], None)).await;
    let cases = [
        "/pools/nope/backends/127.0.0.1:1/drain".to_string(),
        "/pools/web/backends/127.0.0.1:1/drain".to_string(),
        "/pools/web/backends/127.0.0.1%3A1/disable".to_string(),
        format!("/pools/web/backends/{}/explode", a.addr),
        format!("/pools/web/backends/{}", a.addr),
        "/pools/web".to_string(),
        "/nothing-here".to_string(),
    ];
    for path in &cases {
        assert_eq!(admin_post(&d, path, None).await.status, 404, "POST {path}");
    }
    let action = format!("/pools/web/backends/{}/drain", a.addr);
    assert_eq!(admin_get(&d, &action).await.status, 405);
    assert_eq!(admin_get(&d, "/nothing-here").await.status, 404);
    assert_eq!(backend_state(&status(&d).await, "web", a.addr), "active");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[test]
fn non_loopback_admin_bind_without_token_is_a_config_error() {
    let base = simple_config("round-robin", &[], "")
        .replace("backends = []", "backends = [\"127.0.0.1:9\"]");
    let parse =
        |admin: &str| maitred::config::parse(&format!("{base}\n{admin}"), "t.toml", Path::new("."));
    for bind in ["0.0.0.0:9100", "[::]:9100", "192.0.2.1:9100"] {
        let err = parse(&format!("[admin]\nbind = \"{bind}\"\n"))
            .expect_err("a non-loopback admin bind needs a token")
            .to_string();
        assert!(err.contains("token"), "{err}");
    }
    assert!(parse("[admin]\nbind = \"0.0.0.0:9100\"\ntoken = \"t\"\n").is_ok());
    assert!(parse("[admin]\nbind = \"127.0.0.1:9100\"\n").is_ok());
}
