//! Fuzz target `affinity_token`: the checks are `maitred_fuzz::affinity_token` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maitred_fuzz::affinity_token(data));
