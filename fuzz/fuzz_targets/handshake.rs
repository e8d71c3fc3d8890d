//! Fuzz target `handshake`: see `dhtun_fuzz::handshake` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhtun_fuzz::handshake::run(data));
