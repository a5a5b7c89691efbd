//! Fuzz target `response_head`: the checks are `maitred_fuzz::response_head` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maitred_fuzz::response_head(data));
