//! The bodies of dhtun's fuzz targets, one module per target, plus what they share: a cursor
//! over the fuzzer's bytes, the mac1 the handshake messages carry, and builders of valid
//! inputs (used to seed the corpus and to mutate from).
//!
//! Each target module has `run(data)`: it feeds `data` to the parsers and panics only when a
//! property the module documents does not hold. The files under `fuzz_targets/` just hand
//! libFuzzer's input to `run`; `cargo test` here replays the seed corpus through the same
//! functions on the stable toolchain, without libFuzzer.

pub mod config;
pub mod device;
pub mod handshake;
pub mod input;
pub mod known;
pub mod krpc;
pub mod mac;
pub mod packet;
pub mod private_record;
pub mod record;
pub mod seeds;
pub mod wire;
