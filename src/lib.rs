//! maitred: an HTTP (layer-7) reverse-proxy load balancer.
//!
//! # The layers
//!
//! `server/` (client connections) → `proxy/` (one request's logic) → `upstream/`
//! (backend connections), above the state leaves (`config/`, `snapshot.rs`, `pool.rs`,
//! `balancer/`, `backend.rs`, `latency.rs`, `router.rs`, `health/`, `discovery/`,
//! `stats.rs`).
//! Imports only go down: no layer imports one above it and no state leaf imports a
//! layer. `ARCHITECTURE.md` is the map.
//!
//! # The request path
//!
//! `server/listener.rs` accepts a connection (connection limit, PROXY header, TLS) →
//! `server/http_conn.rs` serves HTTP/1.1 or HTTP/2 with its watchdog → `proxy/mod.rs`
//! handles each request against the current [`snapshot::Snapshot`] → `router.rs` picks
//! the pool → `pool.rs` picks a backend through one of `balancer/*` and takes its
//! in-flight slot → `proxy/forward.rs` sends it on a pooled keep-alive connection with
//! `upstream/` (for an HTTP/2 pool, `proxy/http2.rs` on a stream of a multiplexed
//! connection of `upstream/http2/`). The response body carries the in-flight guard and
//! the connection back.
//!
//! # The health flow
//!
//! `health/` runs one checker per backend of each checked pool and publishes
//! transitions to the backend's atomics (`backend.rs`); passive ejection happens on the
//! request path. `upkeep.rs` moves each backend's slow-start ramp (a backend back up,
//! enabled or new ramps in) and slides its pinned-client window (`pinned.rs`);
//! `sampler.rs` samples each pool every second into `history.rs` for the dashboard.
//! Balancers only read those atomics.
//!
//! # The reload flow
//!
//! SIGHUP (`signals.rs`) or `POST /reload` (`admin/`) → [`app::Daemon::reload`]: load and
//! validate the file (`config/`), build a whole new snapshot carrying backend state over
//! (building changes nothing live), bind new listeners and a moved admin listener, swap
//! once and apply the file's backend states, retire what is gone, report what changed
//! (`reload_report.rs`).
//!
//! # The discovery flow
//!
//! A task per pool with `[pool.NAME.discovery]` (`discovery/`) asks DNS and keeps the
//! pool's discovered set; a change goes to the daemon's applier (`app.rs`), which builds
//! a snapshot from the file's config plus the discovered sets the reload's way, swaps it,
//! and logs the reload report's sticky share moved. A reload composes the new file with
//! the running sets, so discovered backends and their state carry over.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod backend;
pub mod backend_tls;
pub mod balancer;
pub mod config;
pub mod conn_limit;
pub mod demo;
pub mod discovery;
pub mod health;
pub mod history;
pub mod inherit;
pub mod latency;
pub mod metrics;
pub mod pinned;
pub mod pool;
pub mod proxy;
pub mod queue;
pub mod reload_report;
pub mod router;
pub mod sampler;
pub mod server;
pub mod service;
pub mod shared;
pub mod shutdown;
pub mod signals;
pub mod snapshot;
pub mod stats;
pub mod tls;
pub mod upgrade;
pub mod upkeep;
pub mod upstream;
