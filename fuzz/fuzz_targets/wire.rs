//! Fuzz target `wire`: see `dhtun_fuzz::wire` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhtun_fuzz::wire::run(data));
