//! `GET /metrics`: every line of the exposition checked strictly, counters that move
//! with traffic, the histogram's shape, and the families DESIGN §7 names.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{admin_config, admin_get, admin_post, send_n};
use crate::common::*;

/// One sample line of the exposition: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses a sample line strictly; `None` when it is malformed.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let name_ok = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !name_ok {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            let eq = rest.find("=\"")?;
            let key = &rest[..eq];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            rest = &rest[eq + 2..];
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()? {
                        (_, 'n') => value.push('\n'),
                        (_, c @ ('\\' | '"')) => value.push(c),
                        _ => return None,
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_string(), value));
            rest = &rest[close + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else {
                rest = rest.strip_prefix('}')?;
                break;
            }
        }
    }
    let value = rest.strip_prefix(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The sample names each declared family may expose.
fn sample_names(family: &str, kind: &str) -> Vec<String> {
    match kind {
        "counter" => vec![format!("{family}_total")],
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{family}{s}"))
            .collect(),
        _ => vec![family.to_string()],
    }
}

#[tokio::test]
async fn metrics_are_well_formed_and_count_requests() {
    const N: usize = 7;
    let a = TestBackend::start("a").await;
    let d = start_daemon(&admin_config(&[&a], None)).await;
    assert!(send_n(&d, N).await.iter().all(|&s| s == 200));
    let r = admin_get(&d, "/metrics").await;
    assert_eq!(r.status, 200);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(
        ct.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ct}"
    );

    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"));
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            for name in sample_names(family, kind) {
                typed.insert(name, kind.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split_once(' ').unwrap().0.to_string());
        } else if let Some(rest) = line.strip_prefix("# UNIT ") {
            assert!(
                [
                    "maitred_request_duration_seconds seconds",
                    "maitred_queue_wait_seconds seconds"
                ]
                .contains(&rest),
                "{line}"
            );
        } else {
            let s = parse_sample(line).unwrap_or_else(|| panic!("malformed sample line: {line:?}"));
            assert!(
                typed.contains_key(&s.name),
                "sample without a # TYPE before it: {line}"
            );
            samples.push(s);
        }
    }
    let families = [
        ("maitred_requests", "counter"),
        ("maitred_request_duration_seconds", "histogram"),
        ("maitred_backend_in_flight", "gauge"),
        ("maitred_backend_up", "gauge"),
        ("maitred_health_transitions", "counter"),
        ("maitred_ejections", "counter"),
        ("maitred_retries", "counter"),
        ("maitred_queue_length", "gauge"),
        ("maitred_queue_wait_seconds", "histogram"),
        ("maitred_queue_timeouts", "counter"),
        ("maitred_reloads", "counter"),
        ("maitred_affinity_placements", "counter"),
    ];
    for (family, kind) in families {
        assert!(helped.contains(family), "# HELP {family} missing");
        for name in sample_names(family, kind) {
            assert_eq!(typed.get(&name).map(String::as_str), Some(kind), "{name}");
        }
    }

    let backend = a.addr.to_string();
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                let have: HashSet<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                s.name == name && have == labels.iter().copied().collect()
            })
            .map(|s| s.value)
    };
    let web_b = [("pool", "web"), ("backend", backend.as_str())];
    let n = N as f64;
    assert_eq!(
        value(
            "maitred_requests_total",
            &[web_b[0], web_b[1], ("class", "2xx")]
        ),
        Some(n)
    );
    assert!(r.body.contains(&format!(
        "maitred_requests_total{{pool=\"web\",backend=\"{backend}\",class=\"2xx\"}} {N}\n"
    )));
    assert_eq!(
        value(
            "maitred_requests_total",
            &[web_b[0], web_b[1], ("class", "5xx")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value("maitred_request_duration_seconds_count", &[("pool", "web")]),
        Some(n)
    );
    assert_eq!(
        value(
            "maitred_request_duration_seconds_bucket",
            &[("pool", "web"), ("le", "+Inf")]
        ),
        Some(n)
    );
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == "maitred_request_duration_seconds_bucket")
        .map(|s| s.value)
        .collect();
    assert_eq!(buckets.len(), 12, "11 bounds and +Inf");
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "buckets are cumulative: {buckets:?}"
    );
    assert!(value("maitred_request_duration_seconds_sum", &[("pool", "web")]).unwrap() > 0.0);
    assert_eq!(value("maitred_backend_up", &web_b), Some(1.0));
    assert_eq!(value("maitred_backend_in_flight", &web_b), Some(0.0));
    assert_eq!(value("maitred_health_transitions_total", &web_b), Some(0.0));
    assert_eq!(value("maitred_ejections_total", &web_b), Some(0.0));
    assert_eq!(
        value("maitred_retries_total", &[("pool", "web")]),
        Some(0.0)
    );
    assert_eq!(
        value("maitred_reloads_total", &[("result", "ok")]),
        Some(0.0)
    );
    assert_eq!(
        value("maitred_reloads_total", &[("result", "failed")]),
        Some(0.0)
    );

    // A reload that fails (this daemon has no file) is counted.
    assert_eq!(admin_post(&d, "/reload", None).await.status, 422);
    let again = admin_get(&d, "/metrics").await.body;
    assert!(
        again.contains("maitred_reloads_total{result=\"failed\"} 1\n"),
        "{again}"
    );
    d.shutdown(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn cookie_affinity_pool_exposes_placements() {
    let a = TestBackend::start("a").await;
    let toml = admin_config(&[&a], None).replace(
        "balancer = \"round-robin\"",
        "balancer = \"cookie-affinity\"",
    ) + "\n[pool.web.affinity]\ncookie = \"sticky\"\n";
    let d = start_daemon(&toml).await;
    let body = admin_get(&d, "/metrics").await.body;
    for kind in ["new", "replaced"] {
        let line = format!("maitred_affinity_placements_total{{pool=\"web\",kind=\"{kind}\"}} ");
        assert!(body.contains(&line), "{line} missing in\n{body}");
    }
    d.shutdown(Some(Duration::from_secs(1))).await;
}
