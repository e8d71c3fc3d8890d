//! Private DHT records (`[dht] network_secret_file`) on a DHT of loopback nodes: what a DHT
//! user who knows a peer's public key finds (nothing), what a storing node is given (no address,
//! no identity key), what members find, and what other networks and dishonest members cannot do.
//! Nothing here leaves loopback.

#[allow(dead_code)]
mod dht_support;

use dht_support::{bounded, client, key, record, seed, unix_micros};
use dhtun::core::keys::PublicKey;
use dhtun::core::privacy::{bep44_signable, Privacy};
use dhtun::core::private_record::{NetworkSecret, PRIVATE_PERIOD};
use dhtun::core::record::{Record, RECORD_SALT};
use dhtun::shell::dht::{Dht, DhtStatus};
use ed25519_dalek::Signer as _;
use mainline::{MutableItem, RequestFilter, RequestSpecific, ServerSettings};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn network(n: u8) -> Privacy {
    Privacy::Private(NetworkSecret::from_bytes([n; 32]))
}

/// A node that stores what it is given, like every other, and keeps a copy of every request it
/// received as text (mainline does not name its request types outside the crate).
#[derive(Debug, Clone, Default)]
struct Spy(Arc<Mutex<Vec<String>>>);

impl RequestFilter for Spy {
    fn allow_request(&self, request: &RequestSpecific, _from: SocketAddrV4) -> bool {
        let text = format!("{request:?}");
        if text.contains("PutMutable") {
            self.0.lock().unwrap().push(text);
        }
        true
    }
}

impl Spy {
    fn start(seed: &Dht) -> (Self, mainline::async_dht::AsyncDht) {
        let spy = Self::default();
        let node = mainline::Dht::builder()
            .server_mode()
            .server_settings(ServerSettings {
                filter: Box::new(spy.clone()),
                ..ServerSettings::default()
            })
            .bootstrap(&[seed.local_addr()])
            .bind_address(Ipv4Addr::LOCALHOST)
            .port(0)
            .build()
            .expect("starting the spy node")
            .as_async();
        (spy, node)
    }

    /// The puts received so far, as text.
    fn puts(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// How `bytes` appear in a request's text: `[1, 2, 3]` without the brackets.
fn as_text(bytes: &[u8]) -> String {
    let text = format!("{bytes:?}");
    text[1..text.len() - 1].to_string()
}

/// Looks `peer` up as a member of `privacy` until a record comes back.
async fn resolve_until(
    dht: &Dht,
    peer: &PublicKey,
    privacy: &Privacy,
    what: &str,
) -> (i64, Record) {
    bounded(what, async {
        loop {
            match dht.resolve_with(peer, None, None, privacy).await {
                Ok(Some(found)) => return found,
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("looking up {what}: {e}"),
            }
        }
    })
    .await
}

async fn resolve_once(dht: &Dht, peer: &PublicKey, privacy: &Privacy) -> Option<(i64, Record)> {
    bounded("a lookup", dht.resolve_with(peer, None, None, privacy))
        .await
        .expect("lookup failed")
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_private_record_is_found_by_members_only_and_shows_nodes_nothing() {
    let seed = seed().await;
    let (spy, _spy_node) = Spy::start(&seed);
    let (a, member, outsider) = (
        client(&seed).await,
        client(&seed).await,
        client(&seed).await,
    );
    let key_a = key(21);
    let ours = network(1);
    let addresses = ["198.51.100.77", "2001:db8::77"];
    let mine = record(43210, &addresses);

    let seq = bounded("A's private publish", a.publish_with(&key_a, &mine, &ours))
        .await
        .expect("private publish failed");
    assert!(a.status().private, "{:?}", a.status());
    let (found_seq, found) =
        resolve_until(&member, &key_a.public_key(), &ours, "A's private record").await;
    assert_eq!((found_seq, found), (seq, mine.clone()));

    // Any DHT user holding A's public key looks it up as today: nothing.
    let public = outsider
        .resolve(&key_a.public_key(), None)
        .await
        .expect("lookup failed");
    assert_eq!(public, None, "A's identity key finds a record");

    // The storing node was given the item, and nothing in it names A or where A is.
    let puts = spy.puts();
    assert!(!puts.is_empty(), "the spy node stored nothing");
    let identity = as_text(key_a.public_key().ed25519_bytes());
    let mut telltales = vec![
        identity.clone(),
        as_text(RECORD_SALT),
        as_text(&43210u16.to_le_bytes()),
    ];
    for address in addresses {
        match address.parse().unwrap() {
            std::net::IpAddr::V4(v4) => telltales.push(as_text(&v4.octets())),
            std::net::IpAddr::V6(v6) => telltales.push(as_text(&v6.octets()[..8])),
        }
    }
    for put in &puts {
        for telltale in &telltales {
            assert!(!put.contains(telltale.as_str()), "{telltale} in {put}");
        }
    }

    // Control: the same spy sees all of that in a public record, so the checks above can fail.
    let before = puts.len();
    bounded("A's public publish", a.publish(&key_a, &mine))
        .await
        .expect("public publish failed");
    let public_puts = &spy.puts()[before..];
    assert!(!public_puts.is_empty());
    for telltale in &telltales {
        assert!(
            public_puts
                .iter()
                .any(|put| put.contains(telltale.as_str())),
            "{telltale} not in the public puts {public_puts:?}"
        );
    }
}

#[test]
fn two_periods_use_unrelated_keys_and_targets() {
    let me = key(22);
    let ours = network(1);
    let now = unix_now();
    let later = now + PRIVATE_PERIOD;
    let slot = |at| {
        let slots = ours.slots(&me, at);
        // The current period's slot, whatever the overlap adds.
        let reader = ours.reader(&me.public_key(), at);
        assert_eq!(reader.targets().len(), slots.len());
        slots.into_iter().next().unwrap()
    };
    let (first, second) = (slot(now), slot(later));
    assert_eq!(second.period(), first.period().map(|p| p + 1));
    let target = |key: &[u8; 32], salt: Option<&[u8]>| MutableItem::target_from_key(key, salt);
    assert_ne!(first.public(), second.public());
    assert_ne!(
        target(&first.public(), first.salt()),
        target(&second.public(), second.salt())
    );
    for slot in [&first, &second] {
        assert_ne!(&slot.public(), me.public_key().ed25519_bytes());
        assert_ne!(
            target(&slot.public(), slot.salt()),
            target(me.public_key().ed25519_bytes(), Some(RECORD_SALT))
        );
    }
    // Unrelated: the keys share no more bits than chance would.
    let differ: u32 = first
        .public()
        .iter()
        .zip(second.public())
        .map(|(x, y)| (x ^ y).count_ones())
        .sum();
    assert!((64..192).contains(&differ), "{differ} bits differ");
}

#[tokio::test(flavor = "current_thread")]
async fn other_networks_cannot_read_and_members_cannot_write_for_another() {
    let seed = seed().await;
    let (a, b) = (client(&seed).await, client(&seed).await);
    let raw = dht_support::raw_node(&seed);
    let key_a = key(23);
    let member = key(24);
    let (x, y) = (network(1), network(2));

    // A publishes in network Y only: a member of X finds nothing.
    bounded(
        "A's publish in Y",
        a.publish_with(&key_a, &record(1000, &["198.51.100.1"]), &y),
    )
    .await
    .expect("publish failed");
    resolve_until(&b, &key_a.public_key(), &y, "A's record in Y").await;
    assert_eq!(resolve_once(&b, &key_a.public_key(), &x).await, None);

    let Privacy::Private(secret_x) = &x else {
        unreachable!()
    };
    let Privacy::Private(secret_y) = &y else {
        unreachable!()
    };
    let period = secret_x.periods(&key_a.public_key(), unix_now()).current;
    let slot = secret_x.keys(&key_a.public_key(), period);
    let lies = record(1000, &["203.0.113.66"]);
    let mut seq = unix_micros();

    // A member of X derives A's slot key (the blinded identity key) but cannot sign for it:
    // no node stores what it signs, neither with its own key nor claimed as A's slot.
    let value = slot.seal(&member, seq, &lies, [1; 24]).unwrap();
    let signable = bep44_signable(seq, &value, None);
    let by_member = member.signing_key().sign(&signable).to_bytes();
    let claimed =
        MutableItem::new_signed_unchecked(*slot.slot_public(), by_member, &value, seq, None);
    let put = bounded("the member's put", raw.put_mutable(claimed, None)).await;
    assert!(
        put.is_err(),
        "a node stored an item for A's slot signed by a member"
    );
    assert_eq!(resolve_once(&b, &key_a.public_key(), &x).await, None);

    // Whoever holds A's slot signer (A itself, or a thief of A's key) still cannot make members
    // take a record that A's identity did not sign for this slot, period and sequence.
    let signer = slot.slot_signer(&key_a).expect("A signs for its own slot");
    assert!(slot.slot_signer(&member).is_none());
    let put = |value: Vec<u8>, seq: i64| {
        let signature = signer.sign(&bep44_signable(seq, &value, None));
        let item = MutableItem::new_signed_unchecked(signer.public(), signature, &value, seq, None);
        let raw = raw.clone();
        async move {
            bounded("a put in A's slot", raw.put_mutable(item, None))
                .await
                .expect("the put in A's slot failed");
        }
    };
    let counted = |status: &DhtStatus| {
        [
            status.records_forged,
            status.records_undecryptable,
            status.records_replayed,
            status.records_wrong_period,
        ]
    };
    // What a dishonest member writes, made from the item's sequence; which counter it moves.
    type Forgery<'a> = Box<dyn Fn(i64) -> Vec<u8> + 'a>;
    let cases: [(&str, Forgery, usize); 4] = [
        (
            "a record in A's name signed by the member",
            Box::new(|seq| slot.seal(&member, seq, &lies, [1; 24]).unwrap()),
            0,
        ),
        (
            "A's record of network Y moved into X's slot",
            Box::new(|seq| {
                secret_y
                    .keys(&key_a.public_key(), period)
                    .seal(&key_a, seq, &lies, [2; 24])
                    .unwrap()
            }),
            1,
        ),
        (
            "A's genuine record of an earlier sequence under a new one",
            Box::new(|seq| slot.seal(&key_a, seq - 1, &lies, [3; 24]).unwrap()),
            2,
        ),
        (
            "A's genuine record of another period",
            Box::new(|seq| {
                let old = secret_x.keys(&key_a.public_key(), period - 1);
                let sealed = old.seal(&key_a, seq, &lies, [4; 24]).unwrap();
                // Re-sealed for this period by the member, who can read the old one.
                reseal(&old, &slot, &sealed)
            }),
            3,
        ),
    ];
    for (what, value, counter) in cases {
        seq += 1;
        let before = counted(&b.status());
        put(value(seq), seq).await;
        let found = resolve_once(&b, &key_a.public_key(), &x).await;
        assert_eq!(found, None, "{what} was accepted");
        let after = counted(&b.status());
        assert!(
            after[counter] > before[counter],
            "{what}: {before:?} -> {after:?}"
        );
    }
    let status = b.status();
    assert_eq!(
        status.records_ignored,
        status.records_bad_signature
            + status.records_malformed
            + status.records_older
            + counted(&status).iter().sum::<u64>(),
        "{status:?}"
    );

    // A's own publish in X goes above the member's and is found.
    let genuine = record(1000, &["198.51.100.1"]);
    let seq = bounded("A's publish in X", a.publish_with(&key_a, &genuine, &x))
        .await
        .expect("publish failed");
    let (got_seq, got) = resolve_until(&b, &key_a.public_key(), &x, "A's record in X").await;
    assert_eq!((got_seq, got), (seq, genuine));
}

/// The inner part of `sealed` (opened with `from`'s keys, as a member can) sealed again with
/// `to`'s.
fn reseal(
    from: &dhtun::core::private_record::PeriodKeys,
    to: &dhtun::core::private_record::PeriodKeys,
    sealed: &[u8],
) -> Vec<u8> {
    let inner = from
        .decrypt(sealed)
        .expect("a member reads its network's records");
    to.seal_inner(inner, [5; 24])
}
