//! One DNS question per discovery round, asked through hickory-resolver, and its answer
//! sorted into what discovery acts on: records (with their TTL), an authoritative
//! "nothing here" (NXDOMAIN or no records), or a failure (timeout, SERVFAIL, REFUSED,
//! no resolver reachable) that must change nothing.
//!
//! The resolver's own cache is off: each round asks the server, so the TTL the answer
//! carries is what schedules the next round.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, ResolveErrorKind, TokioResolver};

use crate::config::{DiscoveryConfig, DiscoveryTarget, MAX_WEIGHT};

/// How long one query waits for a server before it counts as a timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The most backends one answer gives a pool. A DNS server's answer is as untrusted as
/// a client's request, and every backend costs a health checker and a slot in the
/// table (and, for SRV, a query per target): an answer of thousands is cut here, the
/// lowest SRV priorities and then the lowest addresses kept, with a warning.
pub const MAX_DISCOVERED: usize = 1024;

/// One backend address an answer gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its share of new work (the section's `weight`, or the SRV record's).
    pub weight: u32,
    /// SRV priority (lower is preferred); 0 for A/AAAA.
    pub priority: u16,
}

/// What one round learnt.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Records, sorted by address, and the shortest TTL among them.
    Records {
        /// Backends found.
        found: Vec<Found>,
        /// When the answer expires.
        ttl: Duration,
    },
    /// The server says authoritatively that there is nothing: NXDOMAIN or no records.
    Empty(String),
    /// No usable answer: timeout, SERVFAIL, REFUSED, unreachable resolver.
    Failed(String),
}

/// Why the system resolver configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the system resolver configuration (/etc/resolv.conf): {0}")]
pub struct ResolverSetupError(#[source] ResolveError);

/// A resolver for one discovery section.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: TokioResolver,
    target: DiscoveryTarget,
    weight: u32,
}

impl Resolver {
    /// A resolver asking the section's `resolvers`, or the system's when none are set.
    pub fn new(cfg: &DiscoveryConfig) -> Result<Resolver, ResolverSetupError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if cfg.resolvers.is_empty() {
            TokioResolver::builder_tokio().map_err(ResolverSetupError)?
        } else {
            let mut servers = Vec::with_capacity(cfg.resolvers.len() * 2);
            for addr in &cfg.resolvers {
                servers.push(NameServerConfig::new(*addr, Protocol::Udp));
                servers.push(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            let config = ResolverConfig::from_parts(None, Vec::new(), servers);
            TokioResolver::builder_with_config(config, provider)
        };
        tune(builder.options_mut());
        Ok(Resolver {
            inner: builder.build(),
            target: cfg.target.clone(),
            weight: cfg.weight,
        })
    }

    /// Asks once.
    pub async fn resolve(&self) -> Answer {
        self.inner.clear_cache();
        match &self.target {
            DiscoveryTarget::Dns { name, port } => self.resolve_ip(name, *port).await,
            DiscoveryTarget::Srv(name) => self.resolve_srv(name).await,
        }
    }

    async fn resolve_ip(&self, name: &str, port: u16) -> Answer {
        let lookup = match self.inner.lookup_ip(name).await {
            Ok(l) => l,
            Err(e) => return classify(&e),
        };
        let ttl = min_ttl(lookup.as_lookup().records().iter().map(|r| r.ttl()));
        let found = lookup
            .iter()
            .map(|ip| Found {
                addr: SocketAddr::new(ip, port),
                weight: self.weight,
                priority: 0,
            })
            .collect();
        records(found, ttl)
    }

    async fn resolve_srv(&self, name: &str) -> Answer {
        let lookup = match self.inner.srv_lookup(name).await {
            Ok(l) => l,
            Err(e) => return classify(&e),
        };
        let mut ttl = min_ttl(lookup.as_lookup().records().iter().map(|r| r.ttl()));
        let max_weight = lookup.iter().map(|s| s.weight()).max().unwrap_or(1);
        let mut targets: Vec<_> = lookup.iter().collect();
        targets.sort_by_key(|s| s.priority());
        let mut found = Vec::new();
        for srv in targets {
            if found.len() >= MAX_DISCOVERED {
                break;
            }
            let target = srv.target().to_ascii();
            // Targets are resolved one by one: the additional section, when a server
            // sends one, is not something every server (Consul, CoreDNS) fills.
            let ips = match self.inner.lookup_ip(target.as_str()).await {
                Ok(ips) => ips,
                Err(e) => return classify(&e),
            };
            ttl = ttl.min(min_ttl(ips.as_lookup().records().iter().map(|r| r.ttl())));
            for ip in ips.iter() {
                found.push(Found {
                    addr: SocketAddr::new(ip, srv.port()),
                    weight: srv_weight(srv.weight(), max_weight),
                    priority: srv.priority(),
                });
            }
        }
        records(found, ttl)
    }
}

/// Options for every discovery resolver: no cache (each round asks), a bounded wait.
fn tune(opts: &mut ResolverOpts) {
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 2;
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
}

fn records(mut found: Vec<Found>, ttl: Duration) -> Answer {
    // One entry per address (its lowest priority), in address order.
    found.sort_by_key(|f| (f.addr, f.priority));
    found.dedup_by_key(|f| f.addr);
    if found.len() > MAX_DISCOVERED {
        tracing::warn!(
            found = found.len(),
            kept = MAX_DISCOVERED,
            "discovery: answer cut to the most backends a pool takes from DNS"
        );
        found.sort_by_key(|f| (f.priority, f.addr));
        found.truncate(MAX_DISCOVERED);
        found.sort_by_key(|f| f.addr);
    }
    if found.is_empty() {
        return Answer::Empty("no records".into());
    }
    Answer::Records { found, ttl }
}

fn min_ttl(ttls: impl Iterator<Item = u32>) -> Duration {
    Duration::from_secs(ttls.min().map_or(0, u64::from))
}

/// An SRV weight (0 to 65535) as a backend weight (1 to [`MAX_WEIGHT`]): kept as is
/// when the largest fits, else scaled so the largest is `MAX_WEIGHT`; 0 (RFC 2782: "very
/// small chance") is 1.
fn srv_weight(w: u16, max: u16) -> u32 {
    let (w, max) = (u32::from(w), u32::from(max));
    let scaled = if max <= MAX_WEIGHT {
        w
    } else {
        (w * MAX_WEIGHT + max / 2) / max
    };
    scaled.clamp(1, MAX_WEIGHT)
}

/// Sorts a resolver error: an authoritative "nothing here" is [`Answer::Empty`], the rest
/// (timeouts, SERVFAIL, REFUSED, I/O) is [`Answer::Failed`].
fn classify(e: &ResolveError) -> Answer {
    let nothing = match e.kind() {
        ResolveErrorKind::Proto(p) => match p.kind() {
            ProtoErrorKind::NoRecordsFound { response_code, .. } => {
                matches!(
                    *response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                )
            }
            _ => false,
        },
        _ => false,
    };
    if nothing {
        Answer::Empty(e.to_string())
    } else {
        Answer::Failed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_answer_of_thousands_is_cut_to_the_lowest_priorities_and_addresses() {
        let found: Vec<Found> = (0..3000u32)
            .map(|i| Found {
                addr: SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 80)),
                weight: 1,
                priority: if i % 2 == 0 { 20 } else { 10 },
            })
            .collect();
        let Answer::Records { found, .. } = records(found, Duration::from_secs(5)) else {
            panic!("records expected");
        };
        assert_eq!(found.len(), MAX_DISCOVERED);
        assert!(found.iter().all(|f| f.priority == 10), "priority 10 first");
        assert!(found.windows(2).all(|w| w[0].addr < w[1].addr));
    }

    use super::*;

    #[test]
    fn srv_weights_keep_their_ratio_within_the_weight_range() {
        assert_eq!((srv_weight(1, 3), srv_weight(3, 3)), (1, 3));
        assert_eq!(srv_weight(0, 10), 1);
        assert_eq!(
            (srv_weight(2000, 6000), srv_weight(6000, 6000)),
            (333, 1000)
        );
    }

    #[test]
    fn an_answer_without_addresses_is_empty() {
        assert!(matches!(
            records(Vec::new(), Duration::ZERO),
            Answer::Empty(_)
        ));
    }
}
