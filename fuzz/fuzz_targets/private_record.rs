//! Fuzz target `private_record`: see `dhtun_fuzz::private_record` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhtun_fuzz::private_record::run(data));
