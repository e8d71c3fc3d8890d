//! Fuzz target `krpc`: see `dhtun_fuzz::krpc` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhtun_fuzz::krpc::run(data));
