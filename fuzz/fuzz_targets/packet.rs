//! Fuzz target `packet`: see `dhtun_fuzz::packet` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhtun_fuzz::packet::run(data));
