//! DHT records: random records round-trip and decode canonically, and random bytes that decode
//! encode back unchanged.

use dhtun::core::limits::{MAX_RECORD_BYTES, MAX_RECORD_CANDIDATES};
use dhtun::core::record::{is_usable_address, Record, RecordError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::flip;

fn random_usable_ip(rng: &mut StdRng) -> IpAddr {
    loop {
        let ip = if rng.gen_bool(0.5) {
            IpAddr::V4(Ipv4Addr::from(rng.gen::<u32>()))
        } else {
            IpAddr::V6(Ipv6Addr::from(rng.gen::<u128>()))
        };
        if is_usable_address(ip) {
            return ip;
        }
    }
}

#[test]
fn records_round_trip_and_decode_canonically() {
    let mut rng = StdRng::seed_from_u64(0x5245_4344);
    for i in 0..20_000 {
        let count = rng.gen_range(0..=MAX_RECORD_CANDIDATES);
        let mut addresses: Vec<IpAddr> = Vec::new();
        while addresses.len() < count {
            let ip = random_usable_ip(&mut rng);
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        let public = match rng.gen_range(0..3) {
            0 => None,
            1 if !addresses.is_empty() => Some(addresses[0]),
            _ => Some(random_usable_ip(&mut rng)),
        };
        let reflexive = match rng.gen_range(0..3) {
            0 => None,
            1 => public.map(|ip| SocketAddr::new(ip, rng.gen_range(1..=u16::MAX))),
            _ => Some(SocketAddr::new(
                random_usable_ip(&mut rng),
                rng.gen_range(1..=u16::MAX),
            )),
        };
        let record = Record::new(rng.gen_range(1..=u16::MAX), &addresses, public)
            .and_then(|r| r.with_reflexive(reflexive))
            .unwrap();
        let bytes = record.encode().unwrap();
        assert!(bytes.len() <= MAX_RECORD_BYTES);
        assert_eq!(Record::decode(&bytes), Ok(record.clone()));
        // Mutated: whatever still decodes encodes back to exactly the same bytes.
        let mut mutated = bytes.clone();
        match i % 3 {
            0 => flip(&mut rng, &mut mutated),
            1 => mutated.truncate(rng.gen_range(0..mutated.len())),
            _ => mutated.extend((0..rng.gen_range(1..20)).map(|_| rng.gen::<u8>())),
        }
        match Record::decode(&mutated) {
            Ok(again) => assert_eq!(again.encode().unwrap(), mutated),
            Err(RecordError::TooLarge(n)) => assert_eq!(n, mutated.len()),
            Err(_) => {}
        }
    }
}

#[test]
fn random_bytes_that_decode_as_records_encode_back_unchanged() {
    let mut rng = StdRng::seed_from_u64(0x5241_4e44);
    let mut decoded = 0;
    for _ in 0..100_000 {
        let len = rng.gen_range(0..80);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if len >= 5 {
            // A plausible header, so decoding gets past it.
            bytes[0] = 1;
            bytes[3] &= 3;
            bytes[4] %= 4;
            for b in bytes.iter_mut().skip(5).step_by(5) {
                *b = if *b & 1 == 0 { 4 } else { 6 };
            }
        }
        if let Ok(record) = Record::decode(&bytes) {
            decoded += 1;
            assert_eq!(record.encode().unwrap(), bytes);
        }
    }
    assert!(decoded > 100, "only {decoded} random records decoded");
    let too_large = vec![1u8; MAX_RECORD_BYTES + 1];
    assert_eq!(
        Record::decode(&too_large),
        Err(RecordError::TooLarge(MAX_RECORD_BYTES + 1))
    );
}
