//! Fuzz target `proxy_protocol`: the checks are `maitred_fuzz::proxy_protocol` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maitred_fuzz::proxy_protocol(data));
