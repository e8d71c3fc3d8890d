//! Property tests of every parser that sees the network, the DHT or the user: wire messages,
//! the handshake, a whole device, inner IP packets and TUN offloads, DHT records, and the
//! config file. Each feeds thousands of random and mutated-valid inputs from a fixed seed
//! (so a failure reproduces), checks nothing panics, and checks the round trips and
//! consistency properties each format promises. The fuzz targets under `fuzz/` check the same
//! properties with coverage guidance; these run in the ordinary test suite.
//!
//! One module per format (`wire`, `handshake`, `device`, `packets`, `records`, `config`); the
//! mutation helper and the MTU they share are here.

use rand::rngs::StdRng;
use rand::Rng;

mod config;
mod device;
mod handshake;
mod packets;
mod records;
mod wire;

const MTU: usize = 1420;

/// Flips 1 to 3 random bytes of `message`.
fn flip(rng: &mut StdRng, message: &mut [u8]) {
    for _ in 0..rng.gen_range(1..=3) {
        let at = rng.gen_range(0..message.len());
        message[at] ^= rng.gen_range(1..=255u8);
    }
}
