//! Idle HTTP/1 keep-alive connections are parked (their HTTP state dropped, only the
//! socket kept) and serve again when the client speaks: the same connection, the same
//! answers, with header and idle timeouts and shutdown still applying.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// Parked connections of the daemon now.
fn parked(d: &maitred::app::Daemon) -> usize {
    d.shared().parked.load(Ordering::Relaxed)
}

async fn wait_parked(d: &maitred::app::Daemon, n: usize) {
    assert!(
        wait_until(DEADLINE, || async { parked(d) == n }).await,
        "parked connections: {} (want {n})",
        parked(d)
    );
}

/// Reads one response (the test backend answers with Content-Length) from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let done = |out: &[u8]| {
        let text = String::from_utf8_lossy(out);
        let Some(head_end) = text.find("\r\n\r\n") else {
            return false;
        };
        let len = text[..head_end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        out.len() >= head_end + 4 + len
    };
    tokio::time::timeout(DEADLINE, async {
        while !done(&out) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("response within the deadline");
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until the server closes `s`; returns what it sent before closing.
async fn read_until_closed(s: &mut TcpStream) -> Option<String> {
    let mut out = Vec::new();
    let ok = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    ok.ok().map(|_| String::from_utf8_lossy(&out).into_owned())
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A connection to `to` that has served one request.
async fn served_once(to: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(GET).await.unwrap();
    read_response(&mut s).await;
    s
}

/// A connection that has served one request and is now the daemon's only parked one.
async fn parked_connection(d: &maitred::app::Daemon) -> TcpStream {
    let s = served_once(addr(d)).await;
    wait_parked(d, 1).await;
    s
}

/// Proof that the park delay has passed for every connection idle since before the
/// call, while none of them is parked: a fresh connection serves one request, becomes
/// the only parked one, closes, and leaves the lot empty. Had another connection been
/// parked meanwhile (its park was due earlier), the lot would not empty.
async fn witness_park(d: &maitred::app::Daemon) {
    let witness = served_once(addr(d)).await;
    wait_parked(d, 1).await;
    drop(witness);
    assert!(
        wait_until(DEADLINE, || async { parked(d) == 0 }).await,
        "another connection was parked beside the witness"
    );
}

/// `n` more connections that have each served one request, once `total` are parked.
async fn park_more(d: &maitred::app::Daemon, n: usize, total: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(served_once(addr(d)).await);
    }
    wait_parked(d, total).await;
    conns
}

#[tokio::test]
async fn idle_connection_is_parked_and_serves_again_on_the_same_socket() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    for round in 0..3 {
        s.write_all(GET).await.unwrap();
        let resp = read_response(&mut s).await;
        assert!(resp.contains("backend a"), "round {round}: {resp}");
        wait_parked(&d, 1).await;
    }
    // Two pipelined requests in one write after a park: both answered, in order.
    s.write_all(&[GET, GET].concat()).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(first.contains("backend a"), "{first}");
    let second = read_response(&mut s).await;
    assert!(second.contains("backend a"), "{second}");
    assert_eq!(b.hits.load(Ordering::Relaxed), 5);
    wait_parked(&d, 1).await;
    drop(s);
    wait_parked(&d, 0).await;
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_request_split_across_the_park_delay_is_served_whole() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut s = parked_connection(&d).await;
    // Half a head, a pause longer than the park delay, the rest: one request.
    s.write_all(b"GET /split HTTP/1.1\r\nHo").await.unwrap();
    wait_parked(&d, 0).await;
    // The pause lasts while two witnesses, opened one after the other, each idle until
    // parked: more than twice the park delay after the half head, on the daemon's clock.
    for _ in 0..2 {
        witness_park(&d).await;
    }
    assert_eq!(parked(&d), 0, "a connection with half a head was parked");
    s.write_all(b"st: x\r\n\r\n").await.unwrap();
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.hits.load(Ordering::Relaxed), 4);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn header_and_idle_timeouts_apply_to_parked_connections() {
    let b = TestBackend::start("a").await;
    let toml = simple_config("round-robin", &[&b], "").replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nheader_timeout = \"400ms\"\nidle_timeout = \"1500ms\"\n",
    );
    let d = start_daemon(&toml).await;

    // Slowloris after a park: half a head, then silence, is cut off.
    let mut s = parked_connection(&d).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let rest = read_until_closed(&mut s).await;
    assert_eq!(
        rest.as_deref(),
        Some(""),
        "slow head after a park not cut off"
    );

    // A parked connection that stays silent is closed at the idle timeout.
    let mut s = parked_connection(&d).await;
    assert_eq!(read_until_closed(&mut s).await.as_deref(), Some(""));
    wait_parked(&d, 0).await;
    assert_eq!(b.hits.load(Ordering::Relaxed), 2);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut conns = park_more(&d, 4, 4).await;
    let clean = d.shutdown(Some(Duration::from_secs(30))).await;
    assert!(clean, "parked connections held up shutdown");
    for s in &mut conns {
        assert_eq!(read_until_closed(s).await.as_deref(), Some(""));
    }
}

#[tokio::test]
async fn uploads_and_upgrades_work_on_a_connection_that_was_parked() {
    use futures_util::{SinkExt, StreamExt};
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut s = parked_connection(&d).await;

    // A request with a body, after the park: the body reaches the backend whole.
    let body = vec![b'x'; 100_000];
    let head = format!(
        "POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let resp = read_response(&mut s).await;
    assert!(resp.trim_end().ends_with("\r\n\r\n100000"), "{resp}");
    wait_parked(&d, 1).await;

    // Then a WebSocket upgrade on the same socket: tunnelled both ways.
    let url = format!("ws://{}/ws", addr(&d));
    let (mut ws, resp) = tokio_tungstenite::client_async(url, s).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send("after a park".into()).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reply.into_text().unwrap().ends_with(": after a park"));
    ws.close(None).await.unwrap();
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn many_parked_connections_serve_again_in_any_order() {
    let b = TestBackend::start("a").await;
    let d = start_daemon(&simple_config("round-robin", &[&b], "")).await;
    let mut conns = park_more(&d, 40, 40).await;
    // Every other one, last first: each wakes alone and is served.
    for s in conns.iter_mut().rev().step_by(2) {
        s.write_all(GET).await.unwrap();
        let resp = read_response(s).await;
        assert!(resp.contains("backend a"), "{resp}");
    }
    wait_parked(&d, 40).await;
    // Half the clients leave; newcomers take their places in the lot.
    conns.drain(..20);
    wait_parked(&d, 20).await;
    conns.extend(park_more(&d, 20, 40).await);
    // All at once.
    for s in &mut conns {
        s.write_all(GET).await.unwrap();
    }
    for s in &mut conns {
        let resp = read_response(s).await;
        assert!(resp.contains("backend a"), "{resp}");
    }
    wait_parked(&d, 40).await;
    assert_eq!(b.hits.load(Ordering::Relaxed), 40 + 20 + 20 + 40);
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_listener_removed_by_reload_closes_its_parked_connections_only() {
    let b = TestBackend::start("a").await;
    let listener = |name: &str| {
        format!("\n[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n")
    };
    let pool = format!(
        "\n[pool.web]\nbalancer = \"round-robin\"\nbackends = [\"{}\"]\n",
        b.addr
    );
    let server = "[server]\nthreads = 1\naccess_log = \"off\"\nlog_level = \"warn\"\n";
    let dir = scratch_dir("parked-reload");
    let path = dir.join("maitred.toml");
    std::fs::write(
        &path,
        format!("{server}{}{}{pool}", listener("main"), listener("side")),
    )
    .unwrap();
    let d = start_daemon_file(&path).await;
    let side = d.listener_addr("side").unwrap();
    let mut kept = parked_connection(&d).await;
    let mut gone = served_once(side).await;
    wait_parked(&d, 2).await;

    std::fs::write(&path, format!("{server}{}{pool}", listener("main"))).unwrap();
    d.reload(false).await.unwrap();
    assert_eq!(read_until_closed(&mut gone).await.as_deref(), Some(""));
    wait_parked(&d, 1).await;
    kept.write_all(GET).await.unwrap();
    let resp = read_response(&mut kept).await;
    assert!(resp.contains("backend a"), "{resp}");
    wait_parked(&d, 1).await;
    d.shutdown(Some(Duration::from_secs(1))).await;
}
