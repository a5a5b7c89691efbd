//! Replays every seed corpus of the fuzz targets (`fuzz/corpus/<target>/`) through the
//! same checks the targets run (`fuzz/src/lib.rs`, included here), so the corpora and
//! the regressions kept in them are exercised by `cargo test` on stable, on every CI
//! run, without cargo-fuzz or a nightly toolchain.

#![allow(clippy::unwrap_used)]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every file of the corpus of `target`; fails on an empty corpus, so a
/// moved directory cannot make the test pass by finding nothing.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        replayed += 1;
    }
    assert!(replayed > 0, "corpus {} is empty", dir.display());
}

#[test]
fn head_scan_corpus_replays() {
    replay("head_scan", checks::head_scan);
}

#[test]
fn response_head_corpus_replays() {
    replay("response_head", checks::response_head);
}

#[test]
fn chunked_body_corpus_replays() {
    replay("chunked_body", checks::chunked_body);
}

#[test]
fn proxy_protocol_corpus_replays() {
    replay("proxy_protocol", checks::proxy_protocol);
}

#[test]
fn affinity_token_corpus_replays() {
    replay("affinity_token", checks::affinity_token);
}

#[test]
fn config_corpus_replays() {
    replay("config", checks::config);
}
