//! Fuzz target `device`: see `dhtun_fuzz::device` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhtun_fuzz::device::run(data));
