//! Target `record`: `Record::decode` on arbitrary DHT item values.
//!
//! Checks, besides never panicking: a record that decodes re-encodes to exactly the bytes it
//! came from (the encoding is canonical), decodes again to an equal record, and `Record::new`
//! accepts its fields; its candidates are its addresses, then the public IP unless listed, all
//! with the listen port, then the reflexive address unless that repeats one of them; an error
//! for input over the size limit is `TooLarge`.

use dhtun::core::limits::{MAX_RECORD_BYTES, MAX_RECORD_CANDIDATES};
use dhtun::core::record::{is_usable_address, Record, RecordError};
use std::net::SocketAddr;

pub fn run(data: &[u8]) {
    let record = match Record::decode(data) {
        Ok(record) => record,
        Err(e) => {
            if data.len() > MAX_RECORD_BYTES {
                assert_eq!(e, RecordError::TooLarge(data.len()));
            }
            return;
        }
    };
    let encoded = record.encode().expect("a decoded record encodes");
    assert_eq!(encoded, data, "re-encoding changed the bytes");
    assert_eq!(Record::decode(&encoded).as_ref(), Ok(&record));
    let rebuilt = Record::new(record.listen_port(), record.addresses(), record.public_ip())
        .and_then(|r| r.with_reflexive(record.reflexive()))
        .expect("a decoded record's fields are valid");
    assert_eq!(rebuilt, record);

    assert_ne!(record.listen_port(), 0);
    assert!(record.addresses().len() <= MAX_RECORD_CANDIDATES);
    assert!(record.addresses().iter().all(|ip| is_usable_address(*ip)));
    let mut expected: Vec<SocketAddr> = record
        .addresses()
        .iter()
        .map(|ip| SocketAddr::new(*ip, record.listen_port()))
        .collect();
    if let Some(ip) = record.public_ip() {
        assert!(is_usable_address(ip));
        if !record.addresses().contains(&ip) {
            expected.push(SocketAddr::new(ip, record.listen_port()));
        }
    }
    if let Some(reflexive) = record.reflexive() {
        assert!(is_usable_address(reflexive.ip()));
        assert_ne!(reflexive.port(), 0);
        if !expected.contains(&reflexive) {
            expected.push(reflexive);
        }
    }
    assert_eq!(record.candidates().collect::<Vec<_>>(), expected);
}
