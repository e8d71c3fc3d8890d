//! Fuzz target `record`: see `dhtun_fuzz::record` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhtun_fuzz::record::run(data));
