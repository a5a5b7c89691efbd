//! Fuzz target `head_scan`: the checks are `maitred_fuzz::head_scan` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maitred_fuzz::head_scan(data));
