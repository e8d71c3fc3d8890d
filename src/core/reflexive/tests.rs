use super::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every ping due at `now`: (destination, transaction id).
fn due(reflector: &mut Reflector, now: Duration) -> Vec<(SocketAddr, [u8; 4])> {
    let mut out = [0u8; 128];
    let mut sent = Vec::new();
    while let Some((to, len)) = reflector.poll_transmit(now, &mut out) {
        assert_eq!(len, PING_BYTES);
        assert!(sent.len() < MAX_REFLECTORS, "more pings than nodes");
        sent.push((to, transaction_id(&out[..len])));
    }
    sent
}

fn transaction_id(ping: &[u8]) -> [u8; 4] {
    let at = ping.windows(5).position(|w| w == b"1:t4:").unwrap() + 5;
    ping[at..at + 4].try_into().unwrap()
}

/// A node's answer to the ping with `tid`, saying it saw us at `seen`.
fn answer(tid: [u8; 4], seen: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(seen) = seen else {
        panic!("v4 only here")
    };
    let mut out = b"d2:ip6:".to_vec();
    out.extend_from_slice(&seen.ip().octets());
    out.extend_from_slice(&seen.port().to_be_bytes());
    out.extend_from_slice(b"1:rd2:id20:abcdefghijklmnopqrste1:t4:");
    out.extend_from_slice(&tid);
    out.extend_from_slice(b"1:y1:re");
    out
}

const A: &str = "198.18.0.254:6881";
const B: &str = "198.18.0.253:6881";
const C: &str = "198.18.0.252:6881";

#[test]
fn pings_every_node_at_start_then_backs_off_while_unanswered() {
    let mut r = Reflector::new(&[addr(A), addr(B)], [1; 32], ms(0));
    let first = due(&mut r, ms(0));
    assert_eq!(
        first.iter().map(|p| p.0).collect::<Vec<_>>(),
        [addr(A), addr(B)]
    );
    assert_ne!(first[0].1, first[1].1, "transaction ids repeat");
    assert!(due(&mut r, ms(499)).is_empty());
    // 0.5 s, 1 s, 2 s, 4 s, ... between probes, up to the refresh interval.
    let mut at = ms(0);
    for gap in [500, 1000, 2000, 4000, 8000, 16000, 25000, 25000] {
        at += ms(gap);
        assert!(due(&mut r, at - ms(1)).is_empty(), "early at {at:?}");
        assert_eq!(due(&mut r, at).len(), 2, "at {at:?}");
    }
    assert_eq!(r.address(), None);
}

#[test]
fn an_answer_is_learned_and_refreshed() {
    let mut r = Reflector::new(&[addr(A)], [2; 32], ms(0));
    let [(to, tid)] = due(&mut r, ms(0))[..] else {
        panic!()
    };
    let seen = addr("203.0.113.7:40001");
    assert_eq!(
        r.handle_datagram(to, &answer(tid, seen), ms(30)),
        Reflected::Learned(seen)
    );
    assert_eq!(r.address(), Some(seen));
    assert!(!r.port_varies());
    // The same answer again is a replay now: the probe is no longer outstanding.
    assert_eq!(
        r.handle_datagram(to, &answer(tid, seen), ms(31)),
        Reflected::Drop(ReflectDrop::Unsolicited)
    );
    // Quiet until the refresh, which confirms the address.
    assert!(due(&mut r, ms(30) + REFLECTOR_REFRESH - ms(1)).is_empty());
    let now = ms(30) + REFLECTOR_REFRESH;
    let [(_, tid)] = due(&mut r, now)[..] else {
        panic!()
    };
    assert_eq!(
        r.handle_datagram(to, &answer(tid, seen), now),
        Reflected::Unchanged
    );
    // The host moved behind another NAT: the next refresh tells.
    let now = now + REFLECTOR_REFRESH;
    let [(_, tid)] = due(&mut r, now)[..] else {
        panic!()
    };
    let moved = addr("192.0.2.9:1024");
    assert_eq!(
        r.handle_datagram(to, &answer(tid, moved), now),
        Reflected::Learned(moved)
    );
}

#[test]
fn a_refresh_asks_every_node_again_at_once() {
    let mut r = Reflector::new(&[addr(A), addr(B)], [10; 32], ms(0));
    let sent = due(&mut r, ms(0));
    let seen = addr("203.0.113.7:40001");
    for (to, tid) in &sent {
        r.handle_datagram(*to, &answer(*tid, seen), ms(1));
    }
    // Neither answers the next refresh; both back off.
    let now = ms(1) + REFLECTOR_REFRESH;
    assert_eq!(due(&mut r, now).len(), 2);
    let now = now + ms(500);
    assert_eq!(due(&mut r, now).len(), 2);
    assert!(due(&mut r, now + ms(999)).is_empty());
    // The host's addresses changed: both are asked now, and retried quickly again.
    r.refresh(now + ms(10));
    let again = due(&mut r, now + ms(10));
    assert_eq!(again.len(), 2);
    assert_eq!(r.address(), Some(seen), "answers held stay until replaced");
    assert_eq!(due(&mut r, now + ms(510)).len(), 2);
}

#[test]
fn only_the_outstanding_probe_of_a_pinged_node_counts() {
    let mut r = Reflector::new(&[addr(A), addr(B)], [3; 32], ms(0));
    let sent = due(&mut r, ms(0));
    let (tid_a, tid_b) = (sent[0].1, sent[1].1);
    let seen = addr("203.0.113.7:40001");
    let unsolicited = Reflected::Drop(ReflectDrop::Unsolicited);
    // From a node we never pinged, from the other node with A's id, or with a made-up id.
    assert_eq!(
        r.handle_datagram(addr(C), &answer(tid_a, seen), ms(1)),
        unsolicited
    );
    assert_eq!(
        r.handle_datagram(addr(B), &answer(tid_a, seen), ms(1)),
        unsolicited
    );
    let mut other = tid_a;
    other[0] ^= 1;
    assert_eq!(
        r.handle_datagram(addr(A), &answer(other, seen), ms(1)),
        unsolicited
    );
    // A retry replaces the outstanding id: the answer to the first probe is too late.
    let retry = due(&mut r, ms(500));
    assert_eq!(
        r.handle_datagram(addr(A), &answer(tid_a, seen), ms(501)),
        unsolicited
    );
    assert_eq!(
        r.handle_datagram(addr(B), &answer(tid_b, seen), ms(501)),
        unsolicited
    );
    // Two nodes are asked, so one answer is not enough; the second confirms it.
    assert_eq!(
        r.handle_datagram(addr(A), &answer(retry[0].1, seen), ms(502)),
        Reflected::Unchanged
    );
    assert_eq!(r.address(), None);
    assert_eq!(
        r.handle_datagram(addr(B), &answer(retry[1].1, seen), ms(503)),
        Reflected::Learned(seen)
    );
    assert_eq!(r.address(), Some(seen));
}

#[test]
fn malformed_and_unusable_answers_are_dropped() {
    let mut r = Reflector::new(&[addr(A)], [4; 32], ms(0));
    let tid = due(&mut r, ms(0))[0].1;
    assert_eq!(
        r.handle_datagram(addr(A), b"d1:y1:qe", ms(1)),
        Reflected::Drop(ReflectDrop::Malformed(KrpcError::NotAResponse))
    );
    assert_eq!(
        r.handle_datagram(addr(A), &answer(tid, addr("0.0.0.0:5")), ms(1)),
        Reflected::Drop(ReflectDrop::UnusableAddress)
    );
    // Neither used up the probe.
    let seen = addr("203.0.113.7:40001");
    assert_eq!(
        r.handle_datagram(addr(A), &answer(tid, seen), ms(2)),
        Reflected::Learned(seen)
    );
}

#[test]
fn most_nodes_win_and_differing_ports_are_reported() {
    let nodes = [addr(A), addr(B), addr(C)];
    let mut r = Reflector::new(&nodes, [5; 32], ms(0));
    let sent = due(&mut r, ms(0));
    let (x, y) = (addr("203.0.113.7:40001"), addr("203.0.113.7:40002"));
    // One node alone is not enough.
    assert_eq!(
        r.handle_datagram(sent[0].0, &answer(sent[0].1, y), ms(1)),
        Reflected::Unchanged
    );
    assert!(!r.port_varies());
    // Two agree on the IP but not the port (a NAT that maps per destination): the IP stands,
    // and the tie on the port goes to the node listed first.
    assert_eq!(
        r.handle_datagram(sent[1].0, &answer(sent[1].1, x), ms(2)),
        Reflected::Learned(y)
    );
    assert!(r.port_varies(), "two ports for one IP");
    // A majority moves it.
    assert_eq!(
        r.handle_datagram(sent[2].0, &answer(sent[2].1, x), ms(3)),
        Reflected::Learned(x)
    );
    assert!(r.port_varies());
}

#[test]
fn one_lying_node_cannot_set_the_address() {
    let liar = addr("192.0.2.66:6881");
    let (seen, lie) = (addr("203.0.113.7:40001"), addr("198.51.100.9:7777"));
    let mut r = Reflector::new(&[liar, addr(A), addr(B)], [11; 32], ms(0));
    let sent = due(&mut r, ms(0));
    // The liar answers first, and alone: nothing is adopted.
    assert_eq!(
        r.handle_datagram(liar, &answer(sent[0].1, lie), ms(1)),
        Reflected::Unchanged
    );
    assert_eq!(r.address(), None);
    // One honest node against the liar: still nothing.
    assert_eq!(
        r.handle_datagram(addr(A), &answer(sent[1].1, seen), ms(2)),
        Reflected::Unchanged
    );
    assert_eq!(r.address(), None);
    // A second honest node: two agree.
    assert_eq!(
        r.handle_datagram(addr(B), &answer(sent[2].1, seen), ms(3)),
        Reflected::Learned(seen)
    );
    // The liar keeps lying at every refresh; nothing moves.
    let now = ms(3) + REFLECTOR_REFRESH;
    for (to, tid) in due(&mut r, now) {
        let said = if to == liar { lie } else { seen };
        assert_eq!(
            r.handle_datagram(to, &answer(tid, said), now),
            Reflected::Unchanged
        );
    }
    assert_eq!(r.address(), Some(seen));
    // Nor is the DHT's public IP, if the liar was what told mainline, let into our record.
    let ip = |a: SocketAddr| a.ip();
    assert_eq!(confirmed_public_ip(Some(ip(lie)), r.address()), None);
    assert_eq!(
        confirmed_public_ip(Some(ip(seen)), r.address()),
        Some(ip(seen))
    );
    // With no agreed address it is the best candidate there is.
    assert_eq!(confirmed_public_ip(Some(ip(lie)), None), Some(ip(lie)));
}

#[test]
fn the_dht_public_ip_confirms_the_one_node_still_answering() {
    let seen = addr("203.0.113.7:40001");
    let mut r = Reflector::new(&[addr(A), addr(B)], [12; 32], ms(0));
    let sent = due(&mut r, ms(0));
    // B is down: A's answer alone is not enough among two nodes.
    assert_eq!(
        r.handle_datagram(addr(A), &answer(sent[0].1, seen), ms(1)),
        Reflected::Unchanged
    );
    assert_eq!(r.address(), None);
    // The DHT socket reports another IP: no confirmation.
    r.set_dht_public_ip(Some("198.51.100.9".parse().unwrap()));
    assert_eq!(r.address(), None);
    // It reports the same IP: a second witness, and the port is the node's.
    r.set_dht_public_ip(Some(seen.ip()));
    assert_eq!(r.address(), Some(seen));
    // When the nodes disagree it tips neither way: the DHT's IP changes between lookups, and
    // the address would follow it.
    let lie = addr("198.51.100.9:7777");
    let mut split = Reflector::new(&[addr(A), addr(B)], [14; 32], ms(0));
    let sent = due(&mut split, ms(0));
    split.handle_datagram(addr(A), &answer(sent[0].1, seen), ms(1));
    split.handle_datagram(addr(B), &answer(sent[1].1, lie), ms(1));
    for dht_ip in [seen.ip(), lie.ip(), seen.ip()] {
        split.set_dht_public_ip(Some(dht_ip));
        assert_eq!(split.address(), None, "followed the DHT's IP {dht_ip}");
    }
    // After a move, an answer from before it (a node unreachable from the new network) does
    // not contradict the DHT's IP: one node's new answer and the DHT's IP agree.
    let moved_to = addr("192.0.2.50:50000");
    split.refresh(ms(10));
    let sent = due(&mut split, ms(10));
    let from_a = sent
        .iter()
        .find(|(to, _)| *to == addr(A))
        .expect("A asked again");
    split.handle_datagram(addr(A), &answer(from_a.1, moved_to), ms(11));
    split.set_dht_public_ip(Some(moved_to.ip()));
    assert_eq!(
        split.address(),
        Some(moved_to),
        "an old answer blocked the move"
    );
    // Alone, without any node's answer, it sets nothing: it has no port.
    let mut alone = Reflector::new(&[addr(A), addr(B)], [13; 32], ms(0));
    alone.set_dht_public_ip(Some(seen.ip()));
    assert_eq!(alone.address(), None);
}

#[test]
fn a_liar_on_two_ports_of_one_host_is_one_witness() {
    let (liar1, liar2) = (addr("192.0.2.66:6881"), addr("192.0.2.66:6882"));
    let (seen, lie) = (addr("203.0.113.7:40001"), addr("198.51.100.9:7777"));
    let mut r = Reflector::new(&[liar1, liar2, addr(A)], [12; 32], ms(0));
    let sent = due(&mut r, ms(0));
    r.handle_datagram(liar1, &answer(sent[0].1, lie), ms(1));
    assert_eq!(
        r.handle_datagram(liar2, &answer(sent[1].1, lie), ms(1)),
        Reflected::Unchanged
    );
    assert_eq!(
        r.handle_datagram(addr(A), &answer(sent[2].1, seen), ms(2)),
        Reflected::Unchanged
    );
    assert_eq!(r.address(), None);
}

#[test]
fn a_single_node_host_is_trusted_alone() {
    // One bootstrap node on two ports: nobody else could confirm it, so it counts.
    let (one, two) = (addr("198.18.0.254:6881"), addr("198.18.0.254:6882"));
    let mut r = Reflector::new(&[one, two], [13; 32], ms(0));
    let sent = due(&mut r, ms(0));
    let seen = addr("203.0.113.7:40001");
    assert_eq!(
        r.handle_datagram(one, &answer(sent[0].1, seen), ms(1)),
        Reflected::Learned(seen)
    );
}

#[test]
fn unconfirmed_answers_are_forgotten() {
    let mut r = Reflector::new(&[addr(A)], [6; 32], ms(0));
    let tid = due(&mut r, ms(0))[0].1;
    let seen = addr("203.0.113.7:40001");
    r.handle_datagram(addr(A), &answer(tid, seen), ms(0));
    let mut out = [0u8; PING_BYTES];
    let mut now = ms(0);
    while now < REFLECTOR_ANSWER_LIFETIME - ms(100) {
        let _ = r.poll_transmit(now, &mut out);
        assert_eq!(r.address(), Some(seen), "forgotten at {now:?}");
        now += ms(100);
    }
    let _ = r.poll_transmit(REFLECTOR_ANSWER_LIFETIME, &mut out);
    assert_eq!(r.address(), None);
}

#[test]
fn nodes_are_bounded_and_deduplicated() {
    let many: Vec<SocketAddr> = (1..=20)
        .map(|i| addr(&format!("198.18.1.{i}:6881")))
        .chain([addr("198.18.1.1:6881")])
        .collect();
    let mut r = Reflector::new(&many, [7; 32], ms(0));
    assert_eq!(r.slots.len(), MAX_REFLECTORS);
    assert_eq!(due(&mut r, ms(0)).len(), MAX_REFLECTORS);
    let mut none = Reflector::new(&[], [7; 32], ms(0));
    assert!(due(&mut none, ms(0)).is_empty());
    // A buffer too short for a ping sends nothing and loses nothing.
    let mut r = Reflector::new(&[addr(A)], [8; 32], ms(0));
    assert_eq!(r.poll_transmit(ms(0), &mut [0u8; 10]), None);
    assert_eq!(due(&mut r, ms(0)).len(), 1);
}

#[test]
fn random_datagrams_never_panic_or_teach_an_address() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut r = Reflector::new(&[addr(A)], [9; 32], ms(0));
    let _ = due(&mut r, ms(0));
    let mut buf = [0u8; 200];
    for _ in 0..20_000 {
        let len = rng.gen_range(0..buf.len());
        rng.fill(&mut buf[..len]);
        if len > 0 {
            buf[0] = b'd';
        }
        let _ = r.handle_datagram(addr(A), &buf[..len], ms(1));
    }
    assert_eq!(r.address(), None);
}
