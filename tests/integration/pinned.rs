//! Pinned clients, tunnels and drain progress (DESIGN §11): distinct sticky clients per
//! backend within `pinned_window`, open tunnels, and a draining backend's `drain`
//! object, through `/status` and `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::admin::{admin_get, admin_post, status};
use crate::common::*;

/// One listener: hash of `x-user` at `/h`, cookie affinity for the rest (`ck`),
/// each over `backends`, with an admin listener.
fn sticky_config(backends: &[&TestBackend], extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[server]\nthreads = 2\naccess_log = \"off\"\nlog_level = \"warn\"\n\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\npool = \"ck\"\n\n\
         [[listener.route]]\npath_prefix = \"/h\"\npool = \"h\"\n\n\
         [pool.ck]\nbalancer = \"cookie-affinity\"\nbackends = [{list}]\n{extra}\n[pool.ck.affinity]\ncookie = \"srv\"\n\n\
         [pool.h]\nbalancer = \"hash\"\nkey = \"header:x-user\"\nbackends = [{list}]\n{extra}\n\
         [admin]\nbind = \"127.0.0.1:0\"\n"
    )
}

fn backend<'a>(s: &'a Value, pool: &str, addr: SocketAddr) -> &'a Value {
    s["pools"][pool]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr.to_string())
        .unwrap()
}

fn pinned_sum(s: &Value, pool: &str) -> u64 {
    let backends = s["pools"][pool]["backends"].as_array().unwrap();
    backends.iter().map(|b| b["pinned"].as_u64().unwrap()).sum()
}

fn cookie(r: &Reply) -> String {
    let set = r.headers["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn pinned_counts_distinct_cookie_clients_and_hash_keys_within_five_percent() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&sticky_config(&[&a, &b], "")).await;
    let target = addr(&d);
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(target).await;
            for i in 0..250 {
                // A new cookie client, back once with its cookie: one client.
                let first = c.get("/", &[]).await;
                c.get("/", &[("cookie", &cookie(&first))]).await;
                let user = format!("user-{t}-{i}");
                c.get("/h", &[("x-user", &user)]).await;
                c.get("/h", &[("x-user", &user)]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = status(&d).await;
    for pool in ["ck", "h"] {
        let n = pinned_sum(&s, pool);
        assert!(
            (950..=1050).contains(&n),
            "{pool}: 1000 clients counted as {n}"
        );
        for be in [&a, &b] {
            assert!(backend(&s, pool, be.addr)["pinned"].as_u64().unwrap() > 300);
        }
    }
    let metrics = admin_get(&d, "/metrics").await.body;
    let line = format!(
        "maitred_backend_pinned_clients{{pool=\"ck\",backend=\"{}\"}} ",
        a.addr
    );
    assert!(metrics.contains(&line), "{metrics}");
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn draining_backend_shows_its_progress_until_nothing_is_bound() {
    use futures_util::{SinkExt, StreamExt};
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let d = start_daemon(&sticky_config(&[&a, &b], "pinned_window = \"2s\"\n")).await;
    let target = addr(&d);
    // A cookie client of b, with an open WebSocket to it.
    let mut c = Client::connect(target).await;
    let mut jar = None;
    for _ in 0..100 {
        let r = c.get("/", &[]).await;
        if r.body.trim() == "backend b" {
            jar = Some(cookie(&r));
            break;
        }
    }
    let jar = jar.expect("a new client is placed on b");
    let tcp = tokio::net::TcpStream::connect(target).await.unwrap();
    let req = ws_request(target, Some(&jar));
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    ws.send("ping".into()).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
    assert_eq!(
        reply.unwrap().unwrap().into_text().unwrap().as_str(),
        "b: ping"
    );

    let drain = format!("/pools/ck/backends/{}/drain", b.addr);
    assert_eq!(admin_post(&d, &drain, None).await.status, 200);
    let s = status(&d).await;
    let progress = &backend(&s, "ck", b.addr)["drain"];
    assert!(
        progress["since"].as_str().unwrap().ends_with('Z'),
        "{progress}"
    );
    assert_eq!(progress["tunnels"], 1, "{progress}");
    assert!(progress["in_flight"].as_u64().unwrap() >= 1, "{progress}");
    assert!(progress["pinned"].as_u64().unwrap() >= 1, "{progress}");
    assert_eq!(progress["nothing_bound"], false);
    assert!(
        backend(&s, "ck", a.addr).get("drain").is_none(),
        "a is active"
    );
    let metrics = admin_get(&d, "/metrics").await.body;
    let line = format!(
        "maitred_backend_tunnels{{pool=\"ck\",backend=\"{}\"}} 1",
        b.addr
    );
    assert!(metrics.contains(&line), "{metrics}");
    // The bound client still reaches b; a new one does not.
    assert_eq!(
        c.get("/", &[("cookie", &jar)]).await.body.trim(),
        "backend b"
    );
    assert_eq!(c.get("/", &[]).await.body.trim(), "backend a");

    ws.close(None).await.unwrap();
    drop(ws);
    let nothing_bound = wait_until(DEADLINE, || async {
        backend(&status(&d).await, "ck", b.addr)["drain"]["nothing_bound"] == true
    })
    .await;
    let last = backend(&status(&d).await, "ck", b.addr)["drain"].clone();
    assert!(nothing_bound, "{last}");
    assert_eq!(
        (
            last["tunnels"].as_u64(),
            last["in_flight"].as_u64(),
            last["pinned"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}
