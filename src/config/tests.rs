//! Behaviour of the config loader as a user meets it: what a file turns into, and the
//! exact `file:line:col` messages for what is wrong with it.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on a wrong assumption"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../config/maitred.example.toml");

fn ok(source: &str) -> Config {
    match parse(source, "maitred.toml", Path::new(".")) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// Every error, as the user sees it.
fn errors(source: &str) -> Vec<String> {
    errors_in(source, Path::new("."))
}

fn errors_in(source: &str, base_dir: &Path) -> Vec<String> {
    match parse(source, "maitred.toml", base_dir) {
        Ok(_) => panic!("expected errors, the config was accepted"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn assert_one_error_containing(source: &str, needle: &str) {
    let errs = errors(source);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains(needle),
        "{:?} does not contain {needle:?}",
        errs[0]
    );
}

/// A valid listener + pool for tests to add to.
const BASE: &str = r#"
[[listener]]
name = "public"
bind = "127.0.0.1:8080"
pool = "web"

[pool.web]
balancer = "round-robin"
backends = ["10.0.0.1:8000"]
"#;

#[test]
fn example_config_is_accepted() {
    let config = ok(EXAMPLE);
    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "api", "beta", "cart", "chat", "grpc", "search", "sessions", "web"
        ]
    );
    let kinds: Vec<BalancerKind> = config.pools.iter().map(|p| p.balancer).collect();
    for kind in [
        BalancerKind::RoundRobin,
        BalancerKind::LeastConnections,
        BalancerKind::Hash,
        BalancerKind::IpHash,
        BalancerKind::CookieAffinity,
        BalancerKind::PeakEwma,
    ] {
        assert!(
            kinds.contains(&kind),
            "the example has no {} pool",
            kind.name()
        );
    }
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.listeners[0].routes.len(), 5);
    assert_eq!(
        config.admin.as_ref().and_then(|a| a.token.as_deref()),
        Some("change-me")
    );
}

#[test]
fn example_config_states_the_defaults_it_documents() {
    let config = ok(EXAMPLE);
    let web = config.pool("web").unwrap();
    assert_eq!(web.connect_timeout, Duration::from_secs(3));
    assert_eq!(web.response_timeout, Duration::from_secs(60));
    assert_eq!(web.retries, 2);
    assert_eq!(config.server, ServerConfig::default());
}

#[test]
fn minimal_file_gets_the_design_defaults() {
    let config = ok(BASE);
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(config.admin, None);

    let l = &config.listeners[0];
    assert_eq!(l.header_timeout, Duration::from_secs(10));
    assert_eq!(l.idle_timeout, Duration::from_secs(60));
    assert!(!l.proxy_protocol);
    assert!(l.trusted_proxies.is_empty());
    assert_eq!(l.tls, None);
    assert!(l.routes.is_empty());

    let p = &config.pools[0];
    assert_eq!(p.key, None);
    assert_eq!(p.connect_timeout, Duration::from_secs(3));
    assert_eq!(p.response_timeout, Duration::from_secs(60));
    assert_eq!(p.retries, 2);
    assert_eq!(p.max_connections, 0);
    assert_eq!(p.queue_timeout, Duration::ZERO);
    assert_eq!(p.balance_factor, 0.0);
    assert_eq!(
        (p.health.clone(), p.ejection.clone(), p.affinity.clone()),
        (None, None, None)
    );
}

#[test]
fn empty_sections_get_their_defaults() {
    let src = format!(
        "{BASE}\n[pool.web.health]\n[pool.web.ejection]\n\
         [pool.cart]\nbalancer = \"cookie-affinity\"\nbackends = []\n[pool.cart.affinity]\ncookie = \"c\"\n"
    );
    let config = ok(&src);
    let web = config.pool("web").unwrap();
    assert_eq!(
        web.health,
        Some(HealthConfig {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            expect: (200, 399),
            host: None,
            grpc: false,
        })
    );
    assert_eq!(
        web.ejection,
        Some(EjectionConfig {
            consecutive_failures: 5,
            duration: Duration::from_secs(30)
        })
    );
    assert_eq!(
        config.pool("cart").unwrap().affinity,
        Some(AffinityConfig {
            cookie: "c".into(),
            max_age: None,
            secure: false,
            http_only: true,
            same_site: Some(SameSite::Lax),
            fallback: BalancerKind::LeastConnections,
            secret: None,
        })
    );
}

#[test]
fn short_and_long_backend_forms_mean_the_same_thing() {
    let src = BASE.replace(
        r#"backends = ["10.0.0.1:8000"]"#,
        r#"backends = ["10.0.0.1:8000", { addr = "10.0.0.2:8000", weight = 3, state = "drain" }, { addr = "[::1]:8000" }]"#,
    );
    let backends = &ok(&src).pools[0].backends;
    let expected = [
        ("10.0.0.1:8000", 1, AdminState::Active),
        ("10.0.0.2:8000", 3, AdminState::Drain),
        ("[::1]:8000", 1, AdminState::Active),
    ];
    assert_eq!(backends.len(), 3);
    for (b, (addr, weight, state)) in backends.iter().zip(expected) {
        assert_eq!(b.addr, addr);
        assert_eq!(b.socket, addr.parse().unwrap());
        assert_eq!((b.weight, b.state), (weight, state));
    }
}

#[test]
fn host_name_backends_are_resolved() {
    let src = BASE.replace("10.0.0.1:8000", "localhost:8000");
    let b = &ok(&src).pools[0].backends[0];
    assert_eq!(b.addr, "localhost:8000");
    assert!(b.socket.ip().is_loopback());
    assert_eq!(b.socket.port(), 8000);
}

#[test]
fn unresolvable_backend_host_is_an_error() {
    let src = BASE.replace("10.0.0.1:8000", "no-such-host.invalid:8000");
    assert_one_error_containing(
        &src,
        "cannot resolve backend address \"no-such-host.invalid:8000\"",
    );
}

#[test]
fn unknown_key_is_rejected_at_its_position() {
    let src = format!("{BASE}retires = 3\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(
            "maitred.toml:10:1: unknown key `retires`; expected one of `balancer`, `key`"
        ),
        "{}",
        errs[0]
    );
    assert!(errs[0].ends_with("(in `pool.web`)"), "{}", errs[0]);
}

#[test]
fn unknown_balancer_names_every_balancer_at_its_position() {
    let src = BASE.replace(r#"balancer = "round-robin""#, r#"balancer = "round_robin""#);
    assert_eq!(
        errors(&src),
        [
            "maitred.toml:8:12: unknown balancer \"round_robin\"; expected one of round-robin, \
          least-connections, ip-hash, hash, cookie-affinity, peak-ewma"
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let src = r#"
[[listener]]
name = "public"
bind = "127.0.0.1:8080"
pool = "nope"

[pool.web]
balancer = "hash"
backends = [{ addr = "10.0.0.1:8000", weight = 0 }]
connect_timeout = "soon"
"#;
    let errs = errors(src);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs[0].starts_with("maitred.toml:5:8: unknown pool \"nope\"; expected one of web"));
    assert!(errs[1].starts_with("maitred.toml:8:12: balancer \"hash\" needs a key"));
    assert!(errs[2].starts_with("maitred.toml:9:48: weight must be between 1 and 1000, got 0"));
    assert!(
        errs[3].starts_with("maitred.toml:10:19: invalid duration \"soon\" for connect_timeout")
    );
}

#[test]
fn syntax_error_is_one_positioned_line() {
    let errs = errors("[pool.web\nbalancer = 1\n");
    assert_eq!(errs, ["maitred.toml:1:10: unclosed table, expected `]`"]);
}

#[test]
fn bad_backend_entry_says_what_a_backend_may_be() {
    let src = BASE.replace(r#"["10.0.0.1:8000"]"#, "[8000]");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("maitred.toml:9:13: invalid type: integer `8000`, expected a backend"),
        "{}",
        errs[0]
    );
}

#[test]
fn route_to_missing_pool_is_rejected() {
    let src = BASE.replace(
        "\n[pool.web]",
        "[[listener.route]]\nhost = \"shop.example.com\"\npool = \"shop\"\n\n[pool.web]",
    );
    assert_one_error_containing(&src, "unknown pool \"shop\"; expected one of web");
}

#[test]
fn hash_without_key_is_rejected() {
    let src = BASE.replace("round-robin", "hash");
    assert_one_error_containing(&src, "balancer \"hash\" needs a key");
}

#[test]
fn key_on_other_balancers_is_rejected() {
    let src = BASE.replace(
        "balancer = \"round-robin\"",
        "balancer = \"least-connections\"\nkey = \"path\"",
    );
    assert_one_error_containing(&src, "key is only allowed for balancer \"hash\"");
}

#[test]
fn ip_hash_pools_hash_the_client_ip() {
    let src = BASE.replace("round-robin", "ip-hash");
    assert_eq!(ok(&src).pools[0].key, Some(HashKey::ClientIp));
}

#[test]
fn hash_key_forms_are_parsed() {
    let src = BASE.replace(
        "balancer = \"round-robin\"",
        "balancer = \"hash\"\nkey = \"header:X-User\"",
    );
    assert_eq!(
        ok(&src).pools[0].key,
        Some(HashKey::Header(http::HeaderName::from_static("x-user")))
    );
}

#[test]
fn affinity_on_a_non_cookie_pool_is_rejected() {
    let src = format!("{BASE}\n[pool.web.affinity]\ncookie = \"c\"\n");
    assert_one_error_containing(
        &src,
        "[pool.web.affinity] applies only to balancer \"cookie-affinity\"",
    );
}

#[test]
fn peak_ewma_takes_latency_defaults_and_its_section() {
    let src = BASE.replace("round-robin", "peak-ewma");
    assert_eq!(ok(&src).pools[0].latency, Some(LatencyConfig::default()));
    let src = format!("{src}\n[pool.web.latency]\ndecay = \"30s\"\nchoices = 1\n");
    let latency = ok(&src).pools[0].latency.unwrap();
    assert_eq!(latency.decay, Duration::from_secs(30));
    assert_eq!(latency.penalty, Duration::from_secs(1));
    assert_eq!(latency.choices, 1);
    assert_eq!(ok(BASE).pools[0].latency, None);
}

#[test]
fn latency_section_is_checked_at_its_values() {
    let pool = BASE.replace("round-robin", "peak-ewma");
    let src =
        format!("{pool}\n[pool.web.latency]\nchoices = 0\ndecay = \"0s\"\npenalty = \"soon\"\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with("maitred.toml:12:11: choices must be at least 1, got 0"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].starts_with("maitred.toml:13:9: decay must be greater than 0"),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].starts_with("maitred.toml:14:11: invalid duration \"soon\" for penalty"),
        "{}",
        errs[2]
    );
    let src = format!("{pool}\n[pool.web.latency]\nwindow = \"1s\"\n");
    assert_one_error_containing(&src, "unknown key `window`");
}

#[test]
fn latency_on_a_non_peak_ewma_pool_is_rejected() {
    let src = format!("{BASE}\n[pool.web.latency]\nchoices = 2\n");
    assert_one_error_containing(
        &src,
        "[pool.web.latency] applies only to balancer \"peak-ewma\", not \"round-robin\"",
    );
}

#[test]
fn cookie_affinity_without_affinity_section_is_rejected() {
    let src = BASE.replace("round-robin", "cookie-affinity");
    assert_one_error_containing(&src, "needs a [pool.web.affinity] section");
}

#[test]
fn affinity_fallback_must_be_stateless() {
    let src = BASE.replace("round-robin", "cookie-affinity")
        + "[pool.web.affinity]\ncookie = \"c\"\nfallback = \"ip-hash\"\n";
    assert_one_error_containing(&src, "expected one of round-robin, least-connections");
}

#[test]
fn balance_factor_is_zero_or_at_least_one_and_only_for_sticky_pools() {
    let sticky = BASE.replace(
        "balancer = \"round-robin\"",
        "balancer = \"ip-hash\"\nbalance_factor = 1.25",
    );
    assert_eq!(ok(&sticky).pools[0].balance_factor, 1.25);
    assert_one_error_containing(
        &sticky.replace("1.25", "0.5"),
        "balance_factor must be 0 (off) or at least 1.0",
    );
    let stateless = BASE.replace(
        "balancer = \"round-robin\"",
        "balancer = \"round-robin\"\nbalance_factor = 2",
    );
    assert_one_error_containing(
        &stateless,
        "balance_factor applies only to balancers hash, ip-hash and cookie-affinity",
    );
}

#[test]
fn queue_timeout_is_a_duration_and_needs_max_connections() {
    let queued = format!("{BASE}max_connections = 4\nqueue_timeout = \"2s\"\n");
    assert_eq!(ok(&queued).pools[0].queue_timeout, Duration::from_secs(2));
    let zero = format!("{BASE}queue_timeout = \"0s\"\n");
    assert_eq!(ok(&zero).pools[0].queue_timeout, Duration::ZERO);
    assert_eq!(
        errors(&queued.replace("\"2s\"", "\"soon\"")),
        [
            "maitred.toml:11:17: invalid duration \"soon\" for queue_timeout (expected number at 0); \
          expected a duration like \"250ms\", \"2s\" or \"1m\""
        ]
    );
    assert_eq!(
        errors(&format!("{BASE}queue_timeout = \"2s\"\n")),
        [
            "maitred.toml:10:17: queue_timeout needs max_connections > 0: requests wait for a slot \
          only when every backend is at that limit; set max_connections or remove queue_timeout"
        ]
    );
}

#[test]
fn non_loopback_admin_needs_a_token() {
    let src = format!("{BASE}\n[admin]\nbind = \"0.0.0.0:9100\"\n");
    assert_eq!(
        errors(&src),
        [
            "maitred.toml:12:8: admin bind 0.0.0.0:9100 is not a loopback address, so a token is required; \
          add token = \"...\" to [admin]"
        ]
    );
    let with_token = format!("{src}token = \"t\"\n");
    assert_eq!(
        ok(&with_token).admin.and_then(|a| a.token),
        Some("t".to_string())
    );
}

#[test]
fn loopback_admin_needs_no_token() {
    let src = format!("{BASE}\n[admin]\nbind = \"[::1]:9100\"\n");
    let admin = ok(&src).admin;
    assert_eq!(
        admin,
        Some(AdminConfig {
            bind: "[::1]:9100".parse().unwrap(),
            token: None,
            allowed_hosts: vec![],
        })
    );
}

#[test]
fn bad_and_zero_durations_are_rejected() {
    let bad = BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\nidle_timeout = \"2 fortnights\"",
    );
    assert_one_error_containing(&bad, "invalid duration \"2 fortnights\" for idle_timeout");
    let zero = BASE.replace("pool = \"web\"", "pool = \"web\"\nheader_timeout = \"0s\"");
    assert_one_error_containing(&zero, "header_timeout must be greater than 0");
}

#[test]
fn weight_zero_is_rejected() {
    let src = BASE.replace(
        r#""10.0.0.1:8000""#,
        r#"{ addr = "10.0.0.1:8000", weight = 0 }"#,
    );
    assert_one_error_containing(&src, "weight must be between 1 and 1000, got 0");
}

#[test]
fn retries_above_the_limit_are_rejected() {
    let src = format!("{BASE}retries = 16\n");
    assert_one_error_containing(&src, "retries must be between 0 and 15, got 16");
}

#[test]
fn duplicate_backend_in_a_pool_is_rejected() {
    let src = BASE.replace(
        r#"["10.0.0.1:8000"]"#,
        r#"["10.0.0.1:8000", "10.0.0.1:8000"]"#,
    );
    assert_one_error_containing(
        &src,
        "duplicate backend \"10.0.0.1:8000\" in pool \"web\"; first listed on line 9",
    );
}

#[test]
fn duplicate_listener_bind_is_rejected() {
    let src = format!(
        "{BASE}\n[[listener]]\nname = \"other\"\nbind = \"0.0.0.0:8080\"\npool = \"web\"\n"
    );
    assert_eq!(
        errors(&src),
        [
            "maitred.toml:13:8: listener \"other\" binds 0.0.0.0:8080, which conflicts with \
          127.0.0.1:8080 of listener \"public\" on line 4"
        ]
    );
}

#[test]
fn listeners_on_port_zero_never_conflict() {
    let src = BASE.replace("127.0.0.1:8080", "127.0.0.1:0")
        + "\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n";
    assert_eq!(ok(&src).listeners.len(), 2);
}

#[test]
fn duplicate_listener_name_is_rejected() {
    let src = format!(
        "{BASE}\n[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8081\"\npool = \"web\"\n"
    );
    assert_one_error_containing(
        &src,
        "duplicate listener name \"public\"; first used on line 3",
    );
}

#[test]
fn bind_must_be_an_ip_socket_address() {
    let src = BASE.replace("127.0.0.1:8080", "localhost:8080");
    assert_one_error_containing(&src, "invalid bind address \"localhost:8080\"");
}

#[test]
fn used_pool_needs_backends_but_unused_pool_may_be_empty() {
    let used = BASE.replace(r#"["10.0.0.1:8000"]"#, "[]");
    assert_one_error_containing(&used, "pool \"web\" has no backends");
    let unused = format!("{BASE}\n[pool.spare]\nbalancer = \"round-robin\"\nbackends = []\n");
    assert!(ok(&unused).pool("spare").unwrap().backends.is_empty());
}

#[test]
fn routes_are_parsed_and_need_a_condition() {
    let src = BASE.replace(
        "\n[pool.web]",
        "trusted_proxies = [\"10.0.0.0/8\", \"192.168.0.1\"]\n\
         [[listener.route]]\nhost = \"*.Example.com\"\npath_prefix = \"/api\"\npool = \"web\"\n\
         [[listener.route]]\nheader = { name = \"X-Tenant\", value = \"beta\" }\npool = \"web\"\n\n[pool.web]",
    );
    let l = &ok(&src).listeners[0];
    assert_eq!(
        l.trusted_proxies,
        [
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.1/32".parse().unwrap()
        ]
    );
    assert_eq!(
        l.routes[0].host,
        Some(HostMatch::Wildcard(".example.com".into()))
    );
    assert_eq!(l.routes[0].path_prefix.as_deref(), Some("/api"));
    assert_eq!(
        l.routes[1].header.as_ref().map(|h| h.name.as_str()),
        Some("x-tenant")
    );

    let bare = BASE.replace(
        "\n[pool.web]",
        "[[listener.route]]\npool = \"web\"\n\n[pool.web]",
    );
    assert_one_error_containing(&bare, "route has no condition");
}

#[test]
fn server_section_is_read() {
    let src = format!(
        "[server]\nthreads = 4\ngrace_period = \"5s\"\nlog_level = \"maitred=debug,warn\"\naccess_log = \"logs/access.log\"\n{BASE}"
    );
    let server = parse(&src, "maitred.toml", Path::new("/etc/maitred"))
        .unwrap()
        .server;
    assert_eq!(server.threads, 4);
    assert_eq!(server.grace_period, Duration::from_secs(5));
    assert_eq!(server.log_level, "maitred=debug,warn");
    assert_eq!(
        server.access_log,
        AccessLogTarget::File(PathBuf::from("/etc/maitred/logs/access.log"))
    );
    assert_eq!(server.log_format, LogFormat::Text);
}

#[test]
fn log_format_is_text_or_json() {
    let json = format!("[server]\nlog_format = \"json\"\n{BASE}");
    let server = parse(&json, "maitred.toml", Path::new(".")).unwrap().server;
    assert_eq!(server.log_format, LogFormat::Json);
    let bad = errors(&format!("[server]\nlog_format = \"xml\"\n{BASE}"));
    assert_eq!(
        bad,
        vec![
            "maitred.toml:2:14: unknown log_format \"xml\"; expected \"text\" or \"json\""
                .to_string()
        ]
    );
}

/// A fresh directory under the system temp dir for TLS file tests.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("maitred-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    dir
}

const TLS: &str =
    "[listener.tls]\ncertificates = [{ cert = \"tls/a.crt\", key = \"tls/a.key\" }]\n";

#[test]
fn tls_file_missing_is_named_with_its_position() {
    let dir = temp_dir("missing");
    std::fs::write(dir.join("tls/a.crt"), "pem").unwrap();
    let src = BASE.replace("\n[pool.web]", &format!("{TLS}\n[pool.web]"));
    let errs = errors_in(&src, &dir);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("maitred.toml:7:45: cannot read key file \"tls/a.key\""),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains(&dir.join("tls/a.key").display().to_string()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tls_with_readable_files_is_accepted_with_default_alpn() {
    let dir = temp_dir("ok");
    std::fs::write(dir.join("tls/a.crt"), "pem").unwrap();
    std::fs::write(dir.join("tls/a.key"), "pem").unwrap();
    let src = BASE.replace("\n[pool.web]", &format!("{TLS}\n[pool.web]"));
    let config = parse(&src, "maitred.toml", &dir).unwrap();
    let tls = config.listeners[0].tls.clone().unwrap();
    assert_eq!(
        tls.certificates,
        [CertificateConfig {
            cert: dir.join("tls/a.crt"),
            key: dir.join("tls/a.key")
        }]
    );
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tls_needs_certificates_and_known_alpn() {
    let src = BASE.replace(
        "\n[pool.web]",
        "[listener.tls]\ncertificates = []\nalpn = [\"h3\"]\n\n[pool.web]",
    );
    let errs = errors(&src);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].contains("certificates is empty"));
    assert!(errs[1].contains("unsupported ALPN protocol \"h3\""));
}

#[test]
fn every_unknown_pool_is_reported_across_listeners_and_routes() {
    let src = r#"
[[listener]]
name = "a"
bind = "127.0.0.1:8080"
pool = "nope1"

[[listener]]
name = "b"
bind = "127.0.0.1:8081"
pool = "web"

[[listener.route]]
path_prefix = "/x"
pool = "nope2"

[pool.web]
balancer = "round-robin"
backends = ["127.0.0.1:9000"]

[pool.zzz]
balancer = "nope3"
backends = ["127.0.0.1:9000"]
"#;
    let text = errors(src).join("\n");
    for name in ["nope1", "nope2", "nope3"] {
        assert!(text.contains(name), "{name} not reported in:\n{text}");
    }
}

#[test]
fn health_path_and_host_with_line_breaks_are_refused_with_position() {
    for (key, value) in [("path", "/h\r\nX: 1"), ("host", "a\nb"), ("path", "/a b")] {
        let src = format!(
            "{BASE}\n[pool.web.health]\n{key} = \"{}\"\n",
            value.replace('\r', "\\r").replace('\n', "\\n")
        );
        let text = errors(&src).join("\n");
        assert!(text.contains(&format!("invalid health {key}")), "{text}");
        assert!(text.contains("maitred.toml:"), "{text}");
    }
}

#[test]
fn threads_above_1024_are_refused() {
    let src = format!("[server]\nthreads = 1025\n{BASE}");
    assert!(
        errors(&src)
            .join("\n")
            .contains("threads must be between 0 and 1024")
    );
    let src = format!("[server]\nthreads = 1024\n{BASE}");
    assert_eq!(ok(&src).server.threads, 1024);
}

#[test]
fn listener_limits_and_upgrades_have_defaults_and_refuse_h2c() {
    let l = ok(BASE).listeners.remove(0);
    assert_eq!(l.send_timeout, Duration::from_secs(60));
    assert_eq!(l.client_body_timeout, Duration::from_secs(60));
    assert_eq!(l.max_connections, 0);
    assert_eq!(l.upgrades, vec!["websocket".to_string()]);
    let p = ok(BASE).pools.remove(0);
    assert_eq!(p.read_timeout, Duration::from_secs(60));
    assert_eq!(p.keepalive_timeout, Duration::from_secs(4));
    let src = BASE.replace(
        "pool = \"web\"",
        "pool = \"web\"\nupgrades = [\"websocket\", \"H2C\"]",
    );
    assert!(
        errors(&src)
            .join("\n")
            .contains("\"h2c\" may not be listed in upgrades")
    );
}

#[test]
fn slow_start_and_pinned_window_are_durations_with_defaults() {
    let p = &ok(BASE).pools[0];
    assert_eq!(
        (p.slow_start, p.pinned_window),
        (Duration::ZERO, Duration::from_secs(300))
    );
    let set = format!("{BASE}slow_start = \"30s\"\npinned_window = \"1m\"\n");
    let p = &ok(&set).pools[0];
    assert_eq!(
        (p.slow_start, p.pinned_window),
        (Duration::from_secs(30), Duration::from_secs(60))
    );
    assert_one_error_containing(
        &format!("{BASE}slow_start = \"slowly\"\n"),
        "maitred.toml:10:14: invalid duration \"slowly\" for slow_start",
    );
    assert_one_error_containing(
        &format!("{BASE}pinned_window = \"0s\"\n"),
        "maitred.toml:10:17: pinned_window must be greater than 0",
    );
}

/// `BASE` with its pool's backends replaced by a discovery section.
fn with_discovery(section: &str) -> String {
    BASE.replace(
        "backends = [\"10.0.0.1:8000\"]\n",
        &format!("\n[pool.web.discovery]\n{section}\n"),
    )
}

#[test]
fn discovery_section_gives_a_pool_its_backends_with_the_design_defaults() {
    let c = ok(&with_discovery("dns = \"API.svc.cluster.local:8080\""));
    let p = c.pool("web").unwrap();
    assert!(p.backends.is_empty());
    let d = p.discovery.as_ref().unwrap();
    assert_eq!(
        d.target,
        DiscoveryTarget::Dns {
            name: "api.svc.cluster.local".into(),
            port: 8080
        }
    );
    assert_eq!(
        (
            d.min_interval,
            d.max_interval,
            d.weight,
            d.removal,
            d.drain_timeout
        ),
        (
            Duration::from_secs(1),
            Duration::from_secs(30),
            1,
            Removal::Drain,
            Duration::from_secs(300)
        )
    );
    assert!(d.resolvers.is_empty());
    let srv = ok(&with_discovery(
        "srv = \"_http._tcp.api.service.consul\"\nresolvers = [\"127.0.0.1:8600\"]\nremoval = \"remove\"",
    ));
    let d = srv.pool("web").unwrap().discovery.clone().unwrap();
    assert_eq!(
        d.target,
        DiscoveryTarget::Srv("_http._tcp.api.service.consul".into())
    );
    assert_eq!(d.resolvers, vec!["127.0.0.1:8600".parse().unwrap()]);
    assert_eq!(d.removal, Removal::Remove);
}

#[test]
fn discovery_errors_name_their_position() {
    assert_one_error_containing(
        &with_discovery("dns = \"a.test:80\"\nsrv = \"_x._tcp.test\""),
        "maitred.toml:12:7: [pool.web.discovery] takes one of dns and srv, not both",
    );
    assert_one_error_containing(
        &with_discovery("min_interval = \"1s\""),
        "needs dns = \"NAME:PORT\"",
    );
    assert_one_error_containing(
        &with_discovery("dns = \"a.test\""),
        "maitred.toml:11:7: invalid dns \"a.test\": no port",
    );
    assert_one_error_containing(
        &with_discovery("dns = \"a.test:80\"\nresolvers = [\"dns.local\"]"),
        "maitred.toml:12:14: invalid resolver \"dns.local\"",
    );
    assert_one_error_containing(
        &with_discovery("dns = \"a.test:80\"\nmin_interval = \"10s\"\nmax_interval = \"5s\""),
        "maitred.toml:13:16: max_interval (5s) is shorter than min_interval (10s)",
    );
    assert_one_error_containing(
        &with_discovery("dns = \"a.test:80\"\nremoval = \"kill\""),
        "invalid removal \"kill\"; expected one of drain, remove",
    );
    assert_one_error_containing(
        &with_discovery("dns = \"a.test:80\"\nttl = \"1s\""),
        "unknown key `ttl`",
    );
}

#[test]
fn a_pool_without_backends_needs_discovery() {
    let src = BASE.replace("backends = [\"10.0.0.1:8000\"]\n", "");
    assert_one_error_containing(
        &src,
        "pool \"web\" needs backends = [...] or a [pool.web.discovery] section",
    );
    let empty_with_discovery = BASE.replace(
        "backends = [\"10.0.0.1:8000\"]\n",
        "backends = []\n[pool.web.discovery]\ndns = \"a.test:80\"\n",
    );
    assert!(
        ok(&empty_with_discovery)
            .pool("web")
            .unwrap()
            .discovery
            .is_some()
    );
}

#[test]
fn protocol_and_tls_to_backends_are_read_with_their_defaults() {
    let web = |extra: &str| {
        let src = BASE.replace(
            "backends = [\"10.0.0.1:8000\"]\n",
            &format!("backends = [\"10.0.0.1:8000\"]\n{extra}"),
        );
        ok(&src).pool("web").unwrap().clone()
    };
    let plain = web("");
    assert_eq!(plain.protocol, UpstreamProtocol::Http1);
    assert_eq!(plain.tls, None);
    assert_eq!(web("protocol = \"h2c\"\n").protocol, UpstreamProtocol::H2c);
    // h2 and https verify against the system's store by default.
    let h2 = web("protocol = \"h2\"\n");
    assert_eq!(h2.protocol, UpstreamProtocol::H2);
    assert_eq!(
        h2.tls,
        Some(UpstreamTlsConfig {
            verify: true,
            ..UpstreamTlsConfig::default()
        })
    );
    let named = web(
        "protocol = \"https\"\n[pool.web.tls]\nserver_name = \"api.internal\"\nverify = false\n",
    );
    let tls = named.tls.unwrap();
    assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
    assert!(!tls.verify);
    let grpc = web("protocol = \"h2c\"\n[pool.web.health]\ngrpc = true\n");
    let health = grpc.health.unwrap();
    assert!(health.grpc);
    assert_eq!(
        health.path, "",
        "the whole server unless path names a service"
    );
    let service = web("protocol = \"h2c\"\n[pool.web.health]\ngrpc = true\npath = \"shop.Cart\"\n");
    assert_eq!(service.health.unwrap().path, "shop.Cart");
}

#[test]
fn protocol_tls_and_grpc_mistakes_are_named() {
    let with = |extra: &str| {
        BASE.replace(
            "backends = [\"10.0.0.1:8000\"]\n",
            &format!("backends = [\"10.0.0.1:8000\"]\n{extra}"),
        )
    };
    assert_one_error_containing(
        &with("protocol = \"http2\"\n"),
        "unknown protocol \"http2\"; expected one of http1, h2c, h2, https",
    );
    assert_one_error_containing(
        &with("protocol = \"h2c\"\n[pool.web.tls]\nverify = false\n"),
        "[tls] is only for protocol \"h2\" or \"https\", and this pool's protocol is \"h2c\"",
    );
    assert_one_error_containing(
        &with("[pool.web.health]\ngrpc = true\n"),
        "grpc health checks need protocol \"h2c\" or \"h2\", and this pool's protocol is \"http1\"",
    );
    assert_one_error_containing(
        &with("protocol = \"h2\"\n[pool.web.tls]\nca = \"no/such/ca.pem\"\n"),
        "cannot read CA file \"no/such/ca.pem\"",
    );
    assert_one_error_containing(
        &with("protocol = \"h2\"\n[pool.web.tls]\nserver_name = \"bad name!\"\n"),
        "invalid server_name \"bad name!\"",
    );
    assert_one_error_containing(
        &with("protocol = \"https\"\n[pool.web.tls]\nclient_cert = \"Cargo.toml\"\n"),
        "client_cert needs client_key beside it",
    );
    assert_one_error_containing(
        &with("protocol = \"h2c\"\n[pool.web.health]\ngrpc = true\npath = \"/healthz\"\n"),
        "invalid gRPC service name \"/healthz\"",
    );
}

#[test]
fn unverified_backends_and_upgrades_to_http2_pools_are_warned_about() {
    let src = BASE
        .replace(
            "pool = \"web\"\n",
            "pool = \"web\"\nupgrades = [\"websocket\"]\n",
        )
        .replace(
            "backends = [\"10.0.0.1:8000\"]\n",
            "backends = [\"10.0.0.1:8000\"]\nprotocol = \"h2\"\n[pool.web.tls]\nverify = false\n",
        );
    let warnings = ok(&src).warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0]
            .message
            .contains("pool web: [tls] verify = false")
    );
    assert!(
        warnings[0].at_start,
        "logged at start-up, not only by check"
    );
    assert!(!warnings[1].at_start, "upgrades has a default: check only");
    assert!(warnings[1].message.contains(
        "listener public: pool web speaks HTTP/2 to its backends, so Upgrade requests (websocket) routed to it are answered without upgrading"
    ));
    assert!(ok(BASE).warnings().is_empty());
}
