//! The sans-IO core: everything dhtun decides, with no sockets, files, clock reads or async
//! runtime. Time comes in as `now` (time since the daemon started), randomness as a seed, and
//! results go out as values that say what the shell does next.

pub mod backoff;
pub mod checksum;
pub mod cookie;
pub mod device;
pub mod envelope;
pub mod feedback;
pub mod handshake;
pub mod keys;
pub mod limits;
pub mod lookup;
pub mod offload;
pub mod pacer;
pub mod packet;
pub mod peer;
pub mod privacy;
pub mod private_record;
pub mod ratelimit;
pub mod record;
pub mod reflexive;
pub mod replay;
pub mod ring;
pub mod routing;
pub mod session;
pub mod stats;
pub mod wire;
