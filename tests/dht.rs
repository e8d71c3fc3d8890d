//! DHT discovery on loopback: a seed node and client nodes on 127.0.0.1 publish and look up
//! records. Every node is given its bootstrap nodes explicitly, so nothing here ever talks to
//! the public Mainline DHT. Every wait is bounded and fails with a message saying what did not
//! happen.

mod dht_support;

use dht_support::{
    bounded, client, free_port, key, local_options, raw_node, record, resolve_until, seed, start,
    unix_micros, wait_for, FakeNode, Item, Reaped, HOUR,
};
use dhtun::core::limits::DHT_RESOLVE_SETTLE;
use dhtun::core::record::{Record, RECORD_SALT};
use dhtun::shell::dht::DhtOptions;
use futures::StreamExt as _;
use mainline::MutableItem;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Peers in server mode, as on a private network: every node answers, so nothing waits for a
/// request to time out.
#[tokio::test(flavor = "current_thread")]
async fn server_mode_peers_find_each_other_fast() {
    let (publish, resolve) = find_each_other(local_options()).await;
    // Generous bounds: the figures on an idle machine are below 100 ms each (printed above).
    assert!(
        publish < Duration::from_secs(2),
        "publishing took {publish:?}"
    );
    assert!(
        resolve < Duration::from_secs(1),
        "resolving took {resolve:?}"
    );
}

/// Read-only clients, mainline's default until it sees it is reachable. The first-node seed
/// lists them in its routing table, so a publish waits out the request timeout on the client
/// that never answers; lookups still return the first valid item at once.
#[tokio::test(flavor = "current_thread")]
async fn read_only_clients_find_each_other() {
    find_each_other(DhtOptions {
        server_mode: false,
        ..local_options()
    })
    .await;
}

/// A publishes, B finds it; A publishes a newer record, B finds that. Returns how long the
/// first publish and the first lookup took.
async fn find_each_other(options: DhtOptions) -> (Duration, Duration) {
    let seed = seed().await;
    let bootstrap = vec![seed.local_addr().to_string()];
    let peer = || {
        start(DhtOptions {
            bootstrap: bootstrap.clone(),
            ..options.clone()
        })
    };
    let (a, b) = (peer().await, peer().await);
    let key_a = key(1);

    let first = record(51820, &["127.0.0.1", "198.18.0.1"]);
    let started = Instant::now();
    let seq1 = bounded("A's first publish", a.publish(&key_a, &first))
        .await
        .expect("publish failed");
    let publish_time = started.elapsed();

    let started = Instant::now();
    let (got_seq, got) = resolve_until(&b, &key_a.public_key(), None, "A's first record").await;
    let resolve_time = started.elapsed();
    assert_eq!((got_seq, &got), (seq1, &first));
    eprintln!("loopback: publish took {publish_time:?}, resolve took {resolve_time:?}");

    // A moves: a newer record with other addresses replaces the old one.
    let second = record(40000, &["127.0.0.2", "2001:db8::7"]);
    let seq2 = bounded("A's second publish", a.publish(&key_a, &second))
        .await
        .expect("publish failed");
    assert!(seq2 > seq1, "sequence went from {seq1} to {seq2}");
    let started = Instant::now();
    let (got_seq, got) =
        resolve_until(&b, &key_a.public_key(), Some(seq1), "A's second record").await;
    assert_eq!((got_seq, &got), (seq2, &second));
    eprintln!(
        "loopback: resolving the update took {:?}",
        started.elapsed()
    );

    // Asking with the newest sequence already seen finds nothing newer.
    let again = bounded(
        "a lookup with nothing newer",
        b.resolve(&key_a.public_key(), Some(seq2)),
    )
    .await
    .expect("lookup failed");
    assert_eq!(again, None);

    let status = a.status();
    assert_eq!(status.publishes, 2, "{status:?}");
    assert_eq!(status.last_publish_seq, Some(seq2));
    assert!(status.last_error.is_none(), "{status:?}");
    wait_for(&b, "B to report itself bootstrapped", |s| s.bootstrapped).await;
    assert_eq!(b.status().records_ignored, 0, "{:?}", b.status());
    (publish_time, resolve_time)
}

#[tokio::test(flavor = "current_thread")]
async fn records_signed_by_another_key_are_not_accepted() {
    let seed = seed().await;
    let (b, c) = (client(&seed).await, client(&seed).await);
    let (key_a, key_c) = (key(2), key(3));

    // C's own record is reachable, so A's lookup finding nothing below means something.
    let theirs = record(1000, &["127.0.0.3"]);
    bounded("C's publish", c.publish(&key_c, &theirs))
        .await
        .expect("publish failed");
    let (_, got) = resolve_until(&b, &key_c.public_key(), None, "C's record").await;
    assert_eq!(got, theirs);

    // C signs a record and claims it is A's: every honest node refuses to store it.
    let forged = record(1000, &["127.0.0.66"]).encode().unwrap();
    let seq = unix_micros();
    let by_c = MutableItem::new(key_c.signing_key(), &forged, seq, Some(RECORD_SALT));
    let claimed = MutableItem::new_signed_unchecked(
        *key_a.public_key().ed25519_bytes(),
        *by_c.signature(),
        &forged,
        seq,
        Some(RECORD_SALT),
    );
    let raw = raw_node(&seed);
    let put = bounded("the forged put", raw.put_mutable(claimed, None)).await;
    assert!(
        put.is_err(),
        "a node stored a record signed by the wrong key"
    );

    let found = bounded("the lookup of A", b.resolve(&key_a.public_key(), None))
        .await
        .expect("lookup failed");
    assert_eq!(
        found, None,
        "a record for A was accepted though A never published one"
    );
}

/// A restart forgets the sequence of the last publish. When the DHT still holds a record of
/// ours from an earlier run with a higher sequence (the clock was ahead then), the first
/// publish of the new run lands below it, and peers that saw the earlier one ignore it; the
/// check after it publishes again above.
#[tokio::test(flavor = "current_thread")]
async fn a_restart_publishes_above_an_earlier_runs_record() {
    let seed = seed().await;
    let key_a = key(4);
    let hour_ahead = unix_micros() + 3_600_000_000;
    let earlier = record(1000, &["127.0.0.44"]).encode().unwrap();
    let item = MutableItem::new(key_a.signing_key(), &earlier, hour_ahead, Some(RECORD_SALT));
    let raw = raw_node(&seed);
    bounded("the earlier run's put", raw.put_mutable(item, None))
        .await
        .expect("the earlier run's put failed");
    // Nodes that joined since hold nothing for A and outnumber the two that hold the earlier
    // record, so the new run's first put is stored (and counts as a success) though it is lower.
    let (a, b) = (client(&seed).await, client(&seed).await);
    let _newcomers = [client(&seed).await, client(&seed).await];

    let now = record(1000, &["127.0.0.45"]);
    let first = bounded("the first publish", a.publish(&key_a, &now))
        .await
        .expect("publish failed");
    assert!(
        first < hour_ahead,
        "the test needs a first publish below the earlier run's"
    );
    let again = bounded("the check", a.publish_above_earlier_runs(&key_a, &now))
        .await
        .expect("publishing above the earlier run failed")
        .expect("a record from an earlier run with a higher sequence should be published over");
    assert!(
        again > hour_ahead,
        "published {again}, not above {hour_ahead}"
    );
    // A peer that had seen the earlier run's record finds the new one.
    let (seq, got) =
        resolve_until(&b, &key_a.public_key(), Some(hour_ahead), "the new record").await;
    assert_eq!((seq, &got), (again, &now));
    // Nothing newer than ours is out there now: a second check does nothing.
    let twice = bounded(
        "the second check",
        a.publish_above_earlier_runs(&key_a, &now),
    )
    .await
    .expect("the second check failed");
    assert_eq!(twice, None);
}

/// A lying node answers every lookup with a record for A signed by C. mainline's signature
/// check drops it; the lookup finds nothing and the refusal is counted.
#[tokio::test(flavor = "current_thread")]
async fn forged_answers_are_dropped_and_counted() {
    let (key_a, key_c) = (key(6), key(7));
    let value = record(1000, &["127.0.0.66"]).encode().unwrap();
    let seq = unix_micros();
    let by_c = MutableItem::new(key_c.signing_key(), &value, seq, Some(RECORD_SALT));
    let forged = Item {
        key: *key_a.public_key().ed25519_bytes(),
        signature: *by_c.signature(),
        value,
        seq,
    };
    let liar = FakeNode::start(forged, [0x42; 20], Duration::ZERO);
    let b = start(DhtOptions {
        bootstrap: vec![liar.address.to_string()],
        ..local_options()
    })
    .await;
    let found = bounded("the lookup of A", b.resolve(&key_a.public_key(), None))
        .await
        .expect("lookup failed");
    assert_eq!(found, None, "a forged record was accepted");
    wait_for(&b, "the forged answer to be counted", |s| {
        s.records_bad_signature >= 1
    })
    .await;
    assert!(liar.asked(), "the lying node was never asked");
}

/// After a restart nothing is seen yet, and a node that still serves an older record of a peer
/// (its old addresses) may answer a lookup first. The lookup must not take it: it listens on
/// for a moment and takes the newest. Here one node serves an hour-old record of A at once and
/// another A's current record 200 ms later, both validly signed by A.
#[tokio::test(flavor = "current_thread")]
async fn a_lookup_takes_the_newest_record_not_the_first() {
    let key_a = key(8);
    let now = unix_micros();
    let (old, new) = (record(1000, &["127.0.0.80"]), record(1000, &["127.0.0.81"]));
    let stale = FakeNode::start(
        Item::signed(&key_a, &old, now - HOUR),
        [1; 20],
        Duration::ZERO,
    );
    let late = Duration::from_millis(200);
    let fresh = FakeNode::start(Item::signed(&key_a, &new, now), [2; 20], late);
    let b = start(DhtOptions {
        bootstrap: vec![stale.address.to_string(), fresh.address.to_string()],
        ..local_options()
    })
    .await;
    let started = Instant::now();
    // The first record is handed over at once, for handshakes not to wait; the result follows.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let public_a = key_a.public_key();
    let lookup = b.resolve_early(&public_a, None, Some(first_tx));
    let (found, first) = tokio::join!(bounded("the lookup of A", lookup), async {
        let first = first_rx.await.ok();
        (first, started.elapsed())
    });
    let found = found.expect("lookup failed");
    let took = started.elapsed();
    assert_eq!(first.0, Some((now - HOUR, old.clone())), "the early record");
    assert!(first.1 < late, "the early record came after {:?}", first.1);
    assert!(stale.asked() && fresh.asked(), "a node was never asked");
    assert_eq!(
        found,
        Some((now, new.clone())),
        "the lookup took the older record that answered first"
    );
    // Bounded: the lookup ended when both had answered, within the settle window.
    assert!(took < late + DHT_RESOLVE_SETTLE, "the lookup took {took:?}");
    // A node lagging behind the peer's last publish is how a DHT spreads records: not counted.
    let status = b.status();
    assert_eq!(status.records_ignored, 0, "{status:?}");

    // A newer record that comes too late does not hold the lookup up: the older one is taken
    // when the settle window ends, and the next lookup (which knows it) finds the newer.
    let slow = FakeNode::start(
        Item::signed(&key_a, &new, now),
        [3; 20],
        Duration::from_secs(5),
    );
    let stale = FakeNode::start(
        Item::signed(&key_a, &old, now - HOUR),
        [4; 20],
        Duration::ZERO,
    );
    let c = start(DhtOptions {
        bootstrap: vec![stale.address.to_string(), slow.address.to_string()],
        ..local_options()
    })
    .await;
    let started = Instant::now();
    let found = bounded("the lookup of A", c.resolve(&key_a.public_key(), None))
        .await
        .expect("lookup failed");
    let took = started.elapsed();
    assert_eq!(found.map(|(seq, _)| seq), Some(now - HOUR));
    assert!(
        took < DHT_RESOLVE_SETTLE + Duration::from_millis(500),
        "the lookup waited {took:?} for a node that answers after 5 s"
    );
}

/// The same on real nodes: the seed and two others hold A's current record, three that joined
/// later an older one (put after the current one, which the first three refused). A newcomer's
/// lookup hears from all of them and must come back with the current record, whichever
/// answered first.
#[tokio::test(flavor = "current_thread")]
async fn nodes_holding_an_older_record_do_not_win() {
    let seed = seed().await;
    let key_a = key(9);
    let now = unix_micros();
    let (old, new) = (record(1000, &["127.0.0.90"]), record(1000, &["127.0.0.91"]));
    let put = |node: mainline::async_dht::AsyncDht, value: &Record, seq| {
        let value = value.encode().unwrap();
        let item = MutableItem::new(key_a.signing_key(), &value, seq, Some(RECORD_SALT));
        async move { node.put_mutable(item, None).await }
    };
    let early = [client(&seed).await, client(&seed).await];
    for node in &early {
        wait_for(node, "a node to join", |s| s.bootstrapped).await;
    }
    bounded("the current put", put(raw_node(&seed), &new, now))
        .await
        .expect("the current put failed");
    let newcomers = [
        client(&seed).await,
        client(&seed).await,
        client(&seed).await,
    ];
    for node in &newcomers {
        wait_for(node, "a newcomer to join", |s| s.bootstrapped).await;
    }
    // Refused where the current record is; the result says so, and does not matter here.
    let _ = bounded("the older put", put(raw_node(&seed), &old, now - HOUR)).await;
    let held: Vec<i64> = bounded(
        "a look at what the nodes hold",
        raw_node(&seed)
            .get_mutable(key_a.public_key().ed25519_bytes(), Some(RECORD_SALT), None)
            .map(|item| item.seq())
            .collect(),
    )
    .await;
    assert!(
        held.contains(&now) && held.contains(&(now - HOUR)),
        "the test needs both records in the DHT; the nodes hold {held:?}"
    );

    let b = client(&seed).await;
    wait_for(&b, "B to join", |s| s.bootstrapped).await;
    let found = bounded("the lookup of A", b.resolve(&key_a.public_key(), None))
        .await
        .expect("lookup failed");
    assert_eq!(found, Some((now, new)), "the nodes hold {held:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_values_are_ignored_and_counted() {
    let seed = seed().await;
    let (a, b) = (client(&seed).await, client(&seed).await);
    let key_a = key(4);

    // Correctly signed by A's key, but not a record: a future format, or a buggy publisher.
    let raw = raw_node(&seed);
    let junk = MutableItem::new(
        key_a.signing_key(),
        b"\x09junk",
        unix_micros(),
        Some(RECORD_SALT),
    );
    bounded("the junk put", raw.put_mutable(junk, None))
        .await
        .expect("the junk put failed");

    let found = bounded("the lookup of junk", b.resolve(&key_a.public_key(), None))
        .await
        .expect("lookup failed");
    assert_eq!(found, None);
    let status = b.status();
    assert!(status.records_malformed >= 1, "{status:?}");
    assert_eq!(
        status.records_ignored, status.records_malformed,
        "{status:?}"
    );

    // A's next publish goes above the junk's sequence and is found again.
    let good = record(5000, &["127.0.0.4"]);
    let seq = bounded("A's publish", a.publish(&key_a, &good))
        .await
        .expect("publish failed");
    let (got_seq, got) = resolve_until(&b, &key_a.public_key(), None, "A's record").await;
    assert_eq!((got_seq, got), (seq, good));
}

/// `dhtun dht-node` serves as the seed, and stops cleanly on SIGTERM. It is given its own
/// address as bootstrap node, as a list shared by all bootstrap nodes of a network would.
#[tokio::test(flavor = "current_thread")]
async fn dht_node_command_is_a_seed() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("dhtun-dht-node-{}.log", std::process::id()));
    let mut node = Command::new(env!("CARGO_BIN_EXE_dhtun"))
        .args(["dht-node", "--listen", &address, "--bootstrap", &address])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("creating the dht-node log"))
        .spawn()
        .expect("starting dhtun dht-node");
    let seed = vec![format!("127.0.0.1:{port}")];
    let a = start(DhtOptions {
        bootstrap: seed.clone(),
        ..local_options()
    })
    .await;
    let b = start(DhtOptions {
        bootstrap: seed,
        ..local_options()
    })
    .await;
    let key_a = key(5);
    let mine = record(6000, &["127.0.0.5"]);
    // The node may still be starting; the first publish waits for it.
    let seq = bounded("A's publish through dht-node", async {
        loop {
            match a.publish(&key_a, &mine).await {
                Ok(seq) => return seq,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    let (got_seq, got) = resolve_until(&b, &key_a.public_key(), None, "A's record").await;
    assert_eq!((got_seq, got), (seq, mine));

    // SAFETY: kill(2) with the pid of a child we spawned and have not waited for yet.
    let signalled = unsafe { libc::kill(node.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(signalled, 0, "sending SIGTERM to dht-node");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = node.try_wait().expect("waiting for dht-node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!("dht-node did not exit within 5 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        status.success(),
        "dht-node exited with {status}: {log_text}"
    );
    // Bootstrapping from itself would make mainline re-bootstrap in a tight loop, logging an
    // error each time.
    let errors = log_text.matches("Could not bootstrap").count();
    assert!(
        errors < 5,
        "dht-node logged {errors} bootstrap errors:\n{log_text}"
    );
}

/// `dht-node --bootstrap` takes host names, as `[dht] bootstrap` does: a node told to join the
/// seed as `localhost:PORT` joins its network, so a client of that node alone finds a record
/// put through the seed. Had the name been dropped, the node would be a network of its own.
#[tokio::test(flavor = "current_thread")]
async fn dht_node_takes_a_host_name_as_bootstrap() {
    let seed = seed().await;
    let port = free_port();
    let mut node = Reaped(
        Command::new(env!("CARGO_BIN_EXE_dhtun"))
            .args(["dht-node", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--bootstrap",
                &format!("localhost:{}", seed.local_addr().port()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dhtun dht-node"),
    );
    let a = client(&seed).await;
    let b = start(DhtOptions {
        bootstrap: vec![format!("127.0.0.1:{port}")],
        ..local_options()
    })
    .await;
    let key_a = key(10);
    let mine = record(7000, &["127.0.0.10"]);
    let found = bounded("B to find A's record through dht-node", async {
        loop {
            if let Ok(Some(status)) = node.0.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = node.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!("dht-node exited with {status}: {stderr}");
            }
            let _ = a.publish(&key_a, &mine).await;
            match b.resolve(&key_a.public_key(), None).await {
                Ok(Some(found)) => return found,
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("looking A up: {e}"),
            }
        }
    })
    .await;
    assert_eq!(found.1, mine);
}

#[test]
fn dht_node_refuses_a_port_in_use() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_dhtun"))
        .args(["dht-node", "--listen", &address])
        .output()
        .expect("running dhtun dht-node");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already in use"), "stderr: {stderr}");
}
