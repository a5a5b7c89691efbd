//! The config file exactly as written: a serde mirror of DESIGN §3.
//!
//! Nothing here judges meaning. Every table rejects unknown keys (a typo must not pass
//! silently), and every value that validation may need to point at is kept with its
//! byte span ([`Spanned`]), so `validate.rs` can say `file:line:col` for it. Integers are
//! read as `i64` so that an out-of-range number is a readable validation error rather
//! than a serde type error. TOML syntax and type errors leave this module as positioned
//! [`ConfigError`]s.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

use super::diagnostics::{ConfigError, ConfigErrors};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`, optional.
    pub server: Option<RawServer>,
    /// `[admin]`, optional.
    pub admin: Option<RawAdmin>,
    /// `[[listener]]` in file order.
    #[serde(default)]
    pub listener: Vec<RawListener>,
    /// `[pool.NAME]`, keyed by name (spanned, to point at the name).
    #[serde(default)]
    pub pool: BTreeMap<Spanned<String>, RawPool>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Worker threads.
    pub threads: Option<Spanned<i64>>,
    /// Shutdown grace period.
    pub grace_period: Option<Spanned<String>>,
    /// Tracing filter.
    pub log_level: Option<Spanned<String>>,
    /// `off`, `stdout` or a path.
    pub access_log: Option<Spanned<String>>,
    /// `text` or `json`.
    pub log_format: Option<Spanned<String>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bind address.
    pub bind: Spanned<String>,
    /// Bearer token.
    pub token: Option<Spanned<String>>,
    /// Host names answered besides the bind address and localhost.
    pub allowed_hosts: Option<Vec<Spanned<String>>>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Unique name.
    pub name: Spanned<String>,
    /// Bind address.
    pub bind: Spanned<String>,
    /// Default pool.
    pub pool: Spanned<String>,
    /// Request header deadline.
    pub header_timeout: Option<Spanned<String>>,
    /// Idle connection deadline.
    pub idle_timeout: Option<Spanned<String>>,
    /// No progress writing a response.
    pub send_timeout: Option<Spanned<String>>,
    /// No progress reading a request body.
    pub client_body_timeout: Option<Spanned<String>>,
    /// Client connections held at once.
    pub max_connections: Option<Spanned<i64>>,
    /// Upgrade protocols tunnelled.
    pub upgrades: Option<Vec<Spanned<String>>>,
    /// Expect a PROXY header.
    pub proxy_protocol: Option<bool>,
    /// CIDRs or bare IPs.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// `[listener.tls]`.
    pub tls: Option<RawTls>,
    /// `[[listener.route]]` in file order.
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

/// `[listener.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate/key pairs.
    pub certificates: Spanned<Vec<RawCertificate>>,
    /// ALPN protocols.
    pub alpn: Option<Vec<Spanned<String>>>,
}

/// `{ cert = ..., key = ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM chain path.
    pub cert: Spanned<String>,
    /// PEM key path.
    pub key: Spanned<String>,
}

/// One `[[listener.route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Host condition.
    pub host: Option<Spanned<String>>,
    /// Path prefix condition.
    pub path_prefix: Option<Spanned<String>>,
    /// Header condition.
    pub header: Option<RawHeaderMatch>,
    /// Target pool.
    pub pool: Spanned<String>,
}

/// `header = { name = ..., value = ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    /// Header name.
    pub name: Spanned<String>,
    /// Exact value.
    pub value: String,
}

/// One `[pool.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Balancer name.
    pub balancer: Spanned<String>,
    /// Hash key (`hash` only).
    pub key: Option<Spanned<String>>,
    /// Backends, short or long form; may be left out when `discovery` gives them.
    pub backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    /// Upstream connect timeout.
    pub connect_timeout: Option<Spanned<String>>,
    /// Response header deadline.
    pub response_timeout: Option<Spanned<String>>,
    /// No progress reading a response body.
    pub read_timeout: Option<Spanned<String>>,
    /// Idle backend connections are closed after this.
    pub keepalive_timeout: Option<Spanned<String>>,
    /// Retries.
    pub retries: Option<Spanned<i64>>,
    /// Per-backend concurrency limit.
    pub max_connections: Option<Spanned<i64>>,
    /// How long a request waits for a slot when every backend is at the limit.
    pub queue_timeout: Option<Spanned<String>>,
    /// Bounded-load factor.
    pub balance_factor: Option<Spanned<f64>>,
    /// How long a joining backend ramps up (DESIGN §11).
    pub slow_start: Option<Spanned<String>>,
    /// How far back sticky pools count distinct clients (DESIGN §11).
    pub pinned_window: Option<Spanned<String>>,
    /// `[pool.NAME.health]`.
    pub health: Option<RawHealth>,
    /// `[pool.NAME.ejection]`.
    pub ejection: Option<RawEjection>,
    /// `[pool.NAME.affinity]`; spanned to point at it when it does not belong.
    pub affinity: Option<Spanned<RawAffinity>>,
    /// `[pool.NAME.latency]`; spanned to point at it when it does not belong.
    pub latency: Option<Spanned<RawLatency>>,
    /// `[pool.NAME.discovery]`; spanned to point at it for section-wide errors.
    pub discovery: Option<Spanned<RawDiscovery>>,
    /// What maitred speaks to the backends (DESIGN §12).
    pub protocol: Option<Spanned<String>>,
    /// `[pool.NAME.tls]`; spanned to point at it when it does not belong.
    pub tls: Option<Spanned<RawUpstreamTls>>,
}

/// `[pool.NAME.tls]` (DESIGN §12).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM file of the CAs that sign the backends' certificates.
    pub ca: Option<Spanned<String>>,
    /// SNI and the name verified.
    pub server_name: Option<Spanned<String>>,
    /// Whether the backends' certificates are verified.
    pub verify: Option<Spanned<bool>>,
    /// PEM chain presented for mutual TLS.
    pub client_cert: Option<Spanned<String>>,
    /// PEM key of `client_cert`.
    pub client_key: Option<Spanned<String>>,
}

/// `[pool.NAME.discovery]` (DESIGN §10).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// `NAME:PORT`: A and AAAA records, this port.
    pub dns: Option<Spanned<String>>,
    /// An SRV name.
    pub srv: Option<Spanned<String>>,
    /// `IP:PORT` resolvers; the system's when absent or empty.
    pub resolvers: Option<Vec<Spanned<String>>>,
    /// Earliest re-resolution after an answer.
    pub min_interval: Option<Spanned<String>>,
    /// Latest re-resolution after an answer.
    pub max_interval: Option<Spanned<String>>,
    /// Weight of A/AAAA backends.
    pub weight: Option<Spanned<i64>>,
    /// `drain` or `remove`.
    pub removal: Option<Spanned<String>>,
    /// How long a backend gone from DNS may drain.
    pub drain_timeout: Option<Spanned<String>>,
}

/// A backend entry: `"host:port"` or `{ addr, weight, state }`.
#[derive(Debug)]
pub enum RawBackend {
    /// `"10.0.0.11:8000"`; its span is the entry's span.
    Short(String),
    /// `{ addr = ..., weight = ..., state = ... }`.
    Long(RawBackendTable),
}

/// The long form of a backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTable {
    /// `host:port`.
    pub addr: Spanned<String>,
    /// Relative weight.
    pub weight: Option<Spanned<i64>>,
    /// `active`, `drain` or `disabled`.
    pub state: Option<Spanned<String>>,
}

/// Hand-written rather than `#[serde(untagged)]`: an untagged enum buffers its input,
/// which loses the spans inside the long form and turns every mistake into "data did not
/// match any variant". This visitor keeps toml's own positioned errors for the table and
/// says what a backend entry may be for anything else.
impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BackendVisitor;

        impl<'de> Visitor<'de> for BackendVisitor {
            type Value = RawBackend;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a backend: an address string like \"10.0.0.11:8000\" \
                     or a table like { addr = \"10.0.0.12:8000\", weight = 3 }",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Short(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackend, A::Error> {
                let table =
                    RawBackendTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawBackend::Long(table))
            }
        }

        deserializer.deserialize_any(BackendVisitor)
    }
}

/// `[pool.NAME.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Probe path.
    pub path: Option<Spanned<String>>,
    /// Probe interval.
    pub interval: Option<Spanned<String>>,
    /// Probe timeout.
    pub timeout: Option<Spanned<String>>,
    /// Passes to mark up.
    pub rise: Option<Spanned<i64>>,
    /// Failures to mark down.
    pub fall: Option<Spanned<i64>>,
    /// Passing status range.
    pub expect: Option<Spanned<String>>,
    /// Probe Host header.
    pub host: Option<Spanned<String>>,
    /// Check with `grpc.health.v1.Health/Check` instead of `path`.
    pub grpc: Option<Spanned<bool>>,
}

/// `[pool.NAME.ejection]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEjection {
    /// Failures in a row that eject.
    pub consecutive_failures: Option<Spanned<i64>>,
    /// Rest time.
    pub duration: Option<Spanned<String>>,
}

/// `[pool.NAME.affinity]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    /// Cookie name.
    pub cookie: Spanned<String>,
    /// Token lifetime.
    pub max_age: Option<Spanned<String>>,
    /// `Secure`.
    pub secure: Option<bool>,
    /// `HttpOnly`.
    pub http_only: Option<bool>,
    /// `SameSite`.
    pub same_site: Option<Spanned<String>>,
    /// Balancer for clients without a valid cookie.
    pub fallback: Option<Spanned<String>>,
    /// HMAC key material.
    pub secret: Option<Spanned<String>>,
}

/// `[pool.NAME.latency]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    /// Decay time constant.
    pub decay: Option<Spanned<String>>,
    /// Failure penalty.
    pub penalty: Option<Spanned<String>>,
    /// Backends compared per pick.
    pub choices: Option<Spanned<i64>>,
}

/// Parses the TOML text; a syntax or type error becomes one positioned [`ConfigError`].
pub fn parse(source: &str, file: &str) -> Result<RawConfig, ConfigErrors> {
    toml::from_str(source).map_err(|e| ConfigErrors::single(toml_error(&e, source, file)))
}

/// Turns toml's error (multi-line, with a source excerpt) into one `file:line:col` line
/// that speaks of keys rather than serde's fields and Rust types, and names the table or
/// key it is about.
fn toml_error(e: &toml::de::Error, source: &str, file: &str) -> ConfigError {
    let mut message = one_line(e.message());
    for (from, to) in [
        ("unknown field", "unknown key"),
        ("missing field", "missing required key"),
        ("`, expected one of", "`; expected one of"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
    ] {
        message = message.replace(from, to);
    }
    if let Some(path) = key_path(e) {
        message = format!("{message} (in `{path}`)");
    }
    match e.span() {
        Some(span) => ConfigError::at(file, source, span, message),
        None => ConfigError::without_position(file, message),
    }
}

/// The dotted key path toml tracked for the error (`pool.web.backends`). toml only shows
/// it in its `Display` output, as a last line "in `...`" when no source is attached.
fn key_path(e: &toml::de::Error) -> Option<String> {
    let mut bare = e.clone();
    bare.set_input(None);
    let text = bare.to_string();
    let line = text.lines().last()?;
    let path = line.strip_prefix("in `")?.strip_suffix('`')?;
    Some(path.to_string())
}

/// Joins toml's message lines ("unexpected X", "expected Y") into one sentence.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
