//! Fuzz target `chunked_body`: the checks are `maitred_fuzz::chunked_body` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maitred_fuzz::chunked_body(data));
