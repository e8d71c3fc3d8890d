//! Fuzz target `config`: see `dhtun_fuzz::config` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhtun_fuzz::config::run(data));
