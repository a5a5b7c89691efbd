//! Fuzz target `config`: the checks are `maitred_fuzz::config` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maitred_fuzz::config(data));
