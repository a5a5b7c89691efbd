//! Validated configuration: what the rest of maitred is built from.
//!
//! Every value here has passed validation (`validate.rs`): pools referenced by listeners
//! and routes exist, addresses resolve, weights are in range, balancer-specific sections
//! appear only where they apply. Nothing on the request path reads these types; the
//! snapshot builder turns them into runtime structures once per load or reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

/// A whole, valid configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Process-wide settings.
    pub server: ServerConfig,
    /// The admin listener, absent when the file has no `[admin]`.
    pub admin: Option<AdminConfig>,
    /// Listeners in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Pools sorted by name.
    pub pools: Vec<PoolConfig>,
}

impl Config {
    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The listener with this name.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// What is valid but likely not what the operator meant: printed by `check` (each
    /// line), and the security ones also logged at start-up and on reload; never a
    /// reason to refuse the file.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        for p in &self.pools {
            if p.tls.as_ref().is_some_and(|t| !t.verify) {
                out.push(ConfigWarning {
                    message: format!(
                        "pool {}: [tls] verify = false: the backends' certificates are not checked; anyone on the path can stand in for them",
                        p.name
                    ),
                    at_start: true,
                });
            }
        }
        for l in &self.listeners {
            if l.upgrades.is_empty() {
                continue;
            }
            let targets = std::iter::once(&l.pool).chain(l.routes.iter().map(|r| &r.pool));
            let mut named = Vec::new();
            for name in targets {
                let h2 = self.pool(name).is_some_and(|p| p.protocol.is_http2());
                if h2 && !named.contains(&name) {
                    named.push(name);
                    // `upgrades` has a default, so this would be logged for every
                    // listener in front of a gRPC pool: `check` says it, the log does not.
                    out.push(ConfigWarning {
                        message: format!(
                            "listener {}: pool {name} speaks HTTP/2 to its backends, so Upgrade requests ({}) routed to it are answered without upgrading",
                            l.name,
                            l.upgrades.join(", ")
                        ),
                        at_start: false,
                    });
                }
            }
        }
        out
    }
}

/// Something valid in a config that is likely not what the operator meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// What it is, naming the listener or pool.
    pub message: String,
    /// Logged at start-up and on reload too, not only printed by `check`.
    pub at_start: bool,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Worker threads; 0 means one per CPU core. Read at start-up only.
    pub threads: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace_period: Duration,
    /// Default tracing filter, overridden by `RUST_LOG`.
    pub log_level: String,
    /// Where the access log goes.
    pub access_log: AccessLogTarget,
    /// How the daemon's log and the access log are written.
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: 0,
            grace_period: Duration::from_secs(30),
            log_level: "info".to_string(),
            access_log: AccessLogTarget::Stdout,
            log_format: LogFormat::Text,
        }
    }
}

/// `server.log_format`: how every log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: tracing's text lines, the access log's space-separated fields.
    Text,
    /// For machines (journald, Loki, Elasticsearch): one JSON object a line.
    Json,
}

/// `server.access_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// One line per request on standard output.
    Stdout,
    /// One line per request appended to this file.
    File(PathBuf),
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin listener binds.
    pub bind: SocketAddr,
    /// Bearer token for mutating endpoints; required for a non-loopback bind.
    pub token: Option<String>,
    /// Host names (lower case, without port) the admin answers besides its bind
    /// address and `localhost`: the DNS-rebinding guard.
    pub allowed_hosts: Vec<String>,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Bind address.
    pub bind: SocketAddr,
    /// Pool used when no route matches.
    pub pool: String,
    /// From a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// A connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// No progress writing a response to the client for this long closes it and frees
    /// the backend.
    pub send_timeout: Duration,
    /// No progress reading a request body from the client for this long: 408.
    pub client_body_timeout: Duration,
    /// Client connections held at once; beyond it they wait in the accept queue.
    /// 0 = unlimited.
    pub max_connections: u32,
    /// Upgrade protocols tunnelled (lower case); others are answered without
    /// upgrading.
    pub upgrades: Vec<String>,
    /// Expect a PROXY v1/v2 header on each connection.
    pub proxy_protocol: bool,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// TLS termination, when configured.
    pub tls: Option<TlsConfig>,
    /// Routes in file order; the first match wins.
    pub routes: Vec<RouteConfig>,
}

/// `[listener.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chains and keys; the first is the default for clients without SNI
    /// or with a name no certificate covers.
    pub certificates: Vec<CertificateConfig>,
    /// ALPN protocols offered, in order of preference.
    pub alpn: Vec<String>,
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One `[[listener.route]]`: every condition present must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Host match (without port, case-insensitive).
    pub host: Option<HostMatch>,
    /// Path prefix on a segment boundary.
    pub path_prefix: Option<String>,
    /// Header name and exact value.
    pub header: Option<HeaderMatch>,
    /// Pool that serves matching requests.
    pub pool: String,
}

/// A route's host condition, lower-cased at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `shop.example.com`.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

/// A route's header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Header name.
    pub name: HeaderName,
    /// Exact value.
    pub value: String,
}

/// The balancers of DESIGN §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BalancerKind {
    /// Weighted smooth round-robin.
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConnections,
    /// Consistent hashing of the client IP.
    IpHash,
    /// Consistent hashing of a configured key.
    Hash,
    /// LB-inserted, signed affinity cookie.
    CookieAffinity,
    /// Power of random choices by peak-EWMA latency × load (DESIGN §13).
    PeakEwma,
}

impl BalancerKind {
    /// Every balancer name, as written in the config file.
    pub const NAMES: [&'static str; 6] = [
        "round-robin",
        "least-connections",
        "ip-hash",
        "hash",
        "cookie-affinity",
        "peak-ewma",
    ];

    /// The config-file name.
    pub fn name(self) -> &'static str {
        match self {
            BalancerKind::RoundRobin => "round-robin",
            BalancerKind::LeastConnections => "least-connections",
            BalancerKind::IpHash => "ip-hash",
            BalancerKind::Hash => "hash",
            BalancerKind::CookieAffinity => "cookie-affinity",
            BalancerKind::PeakEwma => "peak-ewma",
        }
    }

    /// Parses a config-file name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "round-robin" => BalancerKind::RoundRobin,
            "least-connections" => BalancerKind::LeastConnections,
            "ip-hash" => BalancerKind::IpHash,
            "hash" => BalancerKind::Hash,
            "cookie-affinity" => BalancerKind::CookieAffinity,
            "peak-ewma" => BalancerKind::PeakEwma,
            _ => return None,
        })
    }

    /// Whether requests keep coming back to the same backend.
    pub fn is_sticky(self) -> bool {
        matches!(
            self,
            BalancerKind::IpHash | BalancerKind::Hash | BalancerKind::CookieAffinity
        )
    }
}

/// What a `hash` pool hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client IP (DESIGN §4).
    ClientIp,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's value.
    Query(String),
    /// The request path.
    Path,
}

/// A backend's administrative state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminState {
    /// Takes new work.
    Active,
    /// Keeps clients bound by cookie or open tunnel, takes no new ones.
    Drain,
    /// Takes nothing.
    Disabled,
}

impl AdminState {
    /// The config-file and API name.
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The address as written (`10.0.0.1:8000` or `app3.internal:8000`): the backend's
    /// identity for reload carry-over, cookies and the admin API.
    pub addr: String,
    /// Resolved at load time.
    pub socket: SocketAddr,
    /// Relative share of new work, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
    /// Administrative state from the file (or, for a discovered backend, `drain` while
    /// it drains after leaving DNS).
    pub state: AdminState,
    /// Where the backend comes from.
    pub source: BackendSource,
}

/// Where a backend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendSource {
    /// The file's `backends`.
    Static,
    /// A `[pool.NAME.discovery]` answer.
    Dns,
}

impl BackendSource {
    /// The status-page name.
    pub fn name(self) -> &'static str {
        match self {
            BackendSource::Static => "static",
            BackendSource::Dns => "dns",
        }
    }
}

/// Largest accepted backend weight. Round-robin precomputes one cycle of
/// `sum(weights) / gcd` picks, so the bound keeps that table small.
pub const MAX_WEIGHT: u32 = 1000;

/// Largest accepted `retries`: a request tries at most `1 + MAX_RETRIES` backends.
pub const MAX_RETRIES: u32 = 15;

/// One `[pool.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Unique name.
    pub name: String,
    /// How a backend is chosen.
    pub balancer: BalancerKind,
    /// The hash key: `ClientIp` for `ip-hash`, the configured key for `hash`.
    pub key: Option<HashKey>,
    /// Backends in file order.
    pub backends: Vec<BackendConfig>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// From the request fully sent until the response headers arrive.
    pub response_timeout: Duration,
    /// No progress reading the response body for this long cuts the stream.
    pub read_timeout: Duration,
    /// Idle keep-alive connections to a backend are closed after this.
    pub keepalive_timeout: Duration,
    /// Extra backends tried after a retryable failure.
    pub retries: u32,
    /// Concurrent requests per backend; 0 = unlimited.
    pub max_connections: u32,
    /// How long a request that finds every backend at `max_connections` waits for a
    /// slot, first come first served; zero = no queue (503 at once).
    pub queue_timeout: Duration,
    /// Bounded-load factor for sticky balancers; 0 = off.
    pub balance_factor: f64,
    /// A backend that joins (reload, discovery, back up, enabled) ramps from 10 % to
    /// 100 % of its share of new work over this; zero = off (DESIGN §11).
    pub slow_start: Duration,
    /// Sticky pools report the distinct clients each backend saw within this.
    pub pinned_window: Duration,
    /// Active health checks.
    pub health: Option<HealthConfig>,
    /// Passive ejection.
    pub ejection: Option<EjectionConfig>,
    /// Affinity cookie settings (cookie-affinity only).
    pub affinity: Option<AffinityConfig>,
    /// Latency estimator settings (peak-ewma only; its defaults when the section is
    /// absent).
    pub latency: Option<LatencyConfig>,
    /// DNS discovery (DESIGN §10).
    pub discovery: Option<DiscoveryConfig>,
    /// What maitred speaks to the backends (DESIGN §12).
    pub protocol: UpstreamProtocol,
    /// TLS to the backends: present exactly when `protocol` is `h2` or `https`.
    pub tls: Option<UpstreamTlsConfig>,
}

/// What maitred speaks to a pool's backends (DESIGN §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over TCP.
    #[default]
    Http1,
    /// HTTP/2 over TCP, prior knowledge.
    H2c,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
    /// HTTP/1.1 over TLS.
    Https,
}

impl UpstreamProtocol {
    /// Every protocol name, as written in the config file.
    pub const NAMES: [&'static str; 4] = ["http1", "h2c", "h2", "https"];

    /// The config-file name.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Https => "https",
        }
    }

    /// HTTP/2 (h2c or h2).
    pub fn is_http2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }

    /// Over TLS (h2 or https).
    pub fn is_tls(self) -> bool {
        matches!(self, UpstreamProtocol::H2 | UpstreamProtocol::Https)
    }
}

/// `[pool.NAME.tls]`: how maitred verifies its backends and who it says it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTlsConfig {
    /// PEM file of trusted CAs; `None` = the system's trust store.
    pub ca: Option<PathBuf>,
    /// SNI and the name verified; `None` = each backend's host.
    pub server_name: Option<String>,
    /// `false` accepts any certificate (warned about at start-up).
    pub verify: bool,
    /// Certificate chain and key presented for mutual TLS.
    pub client_auth: Option<ClientAuthConfig>,
}

/// A client certificate for mutual TLS to backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthConfig {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// What a discovery section asks DNS for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiscoveryTarget {
    /// `dns = "NAME:PORT"`: the A and AAAA records of `name`, each at `port`.
    Dns {
        /// The name looked up.
        name: String,
        /// The port of every backend found.
        port: u16,
    },
    /// `srv = "NAME"`: SRV records, their targets, ports and weights.
    Srv(String),
}

impl std::fmt::Display for DiscoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryTarget::Dns { name, port } => write!(f, "{name}:{port}"),
            DiscoveryTarget::Srv(name) => write!(f, "SRV {name}"),
        }
    }
}

/// What happens to a backend whose address leaves DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Removal {
    /// It drains (DESIGN §5) until nothing is bound to it or `drain_timeout` passes.
    Drain,
    /// It is removed at once.
    Remove,
}

/// `[pool.NAME.discovery]` (DESIGN §10).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiscoveryConfig {
    /// The name and record kind.
    pub target: DiscoveryTarget,
    /// Resolvers asked; empty = the system's (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    /// Re-resolve no sooner than this after an answer.
    pub min_interval: Duration,
    /// Re-resolve no later than this after an answer.
    pub max_interval: Duration,
    /// Weight of each A/AAAA backend (SRV records carry their own).
    pub weight: u32,
    /// What happens to a backend that leaves DNS.
    pub removal: Removal,
    /// The longest a leaving backend drains.
    pub drain_timeout: Duration,
}

/// `[pool.NAME.latency]` (DESIGN §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyConfig {
    /// Time constant of the estimate's exponential decay.
    pub decay: Duration,
    /// What a failed attempt (connect error, reset, timeout, 5xx, 429) is charged.
    pub penalty: Duration,
    /// Backends compared per pick, at least 1; as many as the pool has or more compares
    /// them all.
    pub choices: u32,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            decay: Duration::from_secs(10),
            penalty: Duration::from_secs(1),
            choices: 2,
        }
    }
}

/// `[pool.NAME.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Path probed with GET, or with `grpc` the gRPC service name.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Consecutive passes to mark a backend up.
    pub rise: u32,
    /// Consecutive failures to mark it down.
    pub fall: u32,
    /// Inclusive range of passing statuses.
    pub expect: (u16, u16),
    /// Host header for probes; the backend address when absent.
    pub host: Option<String>,
    /// Check with `grpc.health.v1.Health/Check` instead of GET `path`; `path` then
    /// holds the service name asked about (empty: the server as a whole).
    pub grpc: bool,
}

/// `[pool.NAME.ejection]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectionConfig {
    /// Failures in a row on live traffic that eject a backend.
    pub consecutive_failures: u32,
    /// How long an ejected backend rests before it is tried again.
    pub duration: Duration,
}

/// The cookie's SameSite attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=None`.
    None,
}

impl SameSite {
    /// The attribute value.
    pub fn name(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// `[pool.NAME.affinity]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityConfig {
    /// Cookie name.
    pub cookie: String,
    /// Token lifetime and cookie Max-Age; a browser-session cookie when absent.
    pub max_age: Option<Duration>,
    /// `Secure` attribute.
    pub secure: bool,
    /// `HttpOnly` attribute.
    pub http_only: bool,
    /// `SameSite` attribute.
    pub same_site: Option<SameSite>,
    /// Stateless balancer that places clients without a valid cookie.
    pub fallback: BalancerKind,
    /// HMAC key material; a key derived from the pool name when absent.
    pub secret: Option<String>,
}
