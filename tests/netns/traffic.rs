//! Traffic through the tunnel: ping both ways, a 64 MiB TCP transfer, a subnet behind a peer,
//! UDP bursts, and spoofed inner sources dropped.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::transfer::Transfer;
use crate::common::{in_netns, set_int_option, Lab};

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("bad IPv4 {s}: {e}"))
}

#[test]
fn ping_both_ways_ipv4_and_ipv6() {
    if !common::netns_available("ping_both_ways_ipv4_and_ipv6") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("pg", 51820);
    lab.up_pair(&a, &b, &[], &[]);

    let before_a = lab.status(&a.iface);
    let before_b = lab.status(&b.iface);

    lab.must_ping(&a, &b.v4);
    lab.must_ping(&b, &a.v4);
    lab.must_ping(&a, &b.v6);
    lab.must_ping(&b, &a.v6);

    let after_a = lab.status(&a.iface);
    let after_b = lab.status(&b.iface);
    for (me, peer, before, after) in [(&a, &b, &before_a, &after_a), (&b, &a, &before_b, &after_b)]
    {
        for field in ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"] {
            let x0 = lab.peer_counter(before, &peer.public, field);
            let x1 = lab.peer_counter(after, &peer.public, field);
            if x1 <= x0 {
                lab.fail(format!(
                    "{}: peer {} {field} should have grown after 4 successful pings, \
                     but went from {x0} to {x1}",
                    me.iface, peer.iface
                ));
            }
        }
        let p = lab.peer_status(after, &peer.public);
        // A few pings never leave the replay window, so this only shows the field is there.
        if !p["rx_lost_packets"].is_u64() {
            lab.fail(format!(
                "{}: peer {} status should carry rx_lost_packets as a number, got {}",
                me.iface, peer.iface, p["rx_lost_packets"]
            ));
        }
        if !p["last_handshake_secs_ago"].is_u64() {
            lab.fail(format!(
                "{}: peer {} last_handshake_secs_ago should be a number after a handshake, \
                 got {}",
                me.iface, peer.iface, p["last_handshake_secs_ago"]
            ));
        }
        if p["endpoint"] != format!("{}:{}", peer.underlay, peer.port).as_str() {
            lab.fail(format!(
                "{}: peer {} endpoint should be the static {}:{}, got {}",
                me.iface, peer.iface, peer.underlay, peer.port, p["endpoint"]
            ));
        }
    }
}

const TCP_TOTAL: usize = 64 << 20;
const TCP_SEED: u64 = 0x00d4_7f3a_61c0_ffee;
const TCP_PORT: u16 = 47001;
const TCP_OVERALL: Duration = Duration::from_secs(120);

#[test]
fn tcp_64mib_transfer_intact() {
    if !common::netns_available("tcp_64mib_transfer_intact") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("tc", 51821);
    lab.up_pair(&a, &b, &[], &[]);
    // Establish the session first, so the transfer measures the data path.
    lab.must_ping(&a, &b.v4);

    let deadline = Instant::now() + TCP_OVERALL;
    let transfer = Transfer::start(&a, &b, TCP_PORT, TCP_TOTAL, TCP_SEED, deadline)
        .unwrap_or_else(|e| lab.fail(format!("transfer from A to B: {e}")));
    let start = transfer.started;
    let (sent, received) = transfer.finish();
    let secs = start.elapsed().as_secs_f64();
    let (sent, sent_hash) = sent.unwrap_or_else(|e| lab.fail(format!("sender in A failed: {e}")));
    let (got, got_hash) =
        received.unwrap_or_else(|e| lab.fail(format!("receiver in B failed: {e}")));
    eprintln!(
        "tcp_64mib_transfer_intact: {got} bytes in {secs:.1} s ({:.1} MiB/s)",
        got as f64 / secs / (1 << 20) as f64
    );
    if got != TCP_TOTAL || sent != TCP_TOTAL || got_hash != sent_hash {
        lab.fail(format!(
            "expected {TCP_TOTAL} identical bytes on both ends; sent {sent} (fnv64 {sent_hash:#x}), \
             received {got} (fnv64 {got_hash:#x})"
        ));
    }

    let st = lab.status(&a.iface);
    let tx = lab.peer_counter(&st, &b.public, "tx_bytes");
    if tx < TCP_TOTAL as u64 {
        lab.fail(format!(
            "A's tx_bytes for B is {tx}, expected at least the {TCP_TOTAL} payload bytes sent"
        ));
    }
}

#[test]
fn tcp_crosses_an_underlay_with_a_smaller_mtu() {
    // An underlay whose MTU is below the tunnel's MTU plus its 60 bytes of overhead (GCP's
    // 1460, a PPPoE link): the kernel refuses GSO trains of full-size datagrams. The daemon
    // must fall back to sending them one by one, which the kernel fragments; before, every
    // train was dropped and TCP crawled at a few kbit/s.
    if !common::netns_available("tcp_crosses_an_underlay_with_a_smaller_mtu") {
        return;
    }
    const TOTAL: usize = 8 << 20;
    let (mut lab, a, b) = Lab::pair("mt", 51833);
    for ns in [&a.ns, &b.ns] {
        lab.ip_ok(ns, &["link", "set", "ul0", "mtu", "1400"]);
    }
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    let deadline = Instant::now() + Duration::from_secs(60);
    let transfer = Transfer::start(&a, &b, TCP_PORT + 1, TOTAL, TCP_SEED, deadline)
        .unwrap_or_else(|e| lab.fail(format!("transfer from A to B: {e}")));
    let (sent, received) = transfer.finish();
    let (sent, sent_hash) = sent.unwrap_or_else(|e| lab.fail(format!("sender in A failed: {e}")));
    let (got, got_hash) =
        received.unwrap_or_else(|e| lab.fail(format!("receiver in B failed: {e}")));
    if got != TOTAL || sent != TOTAL || got_hash != sent_hash {
        let st = lab.status(&a.iface);
        lab.fail(format!(
            "expected {TOTAL} identical bytes on both ends within 60 s over a 1400-byte \
             underlay; sent {sent}, received {got}; A's drops: {}",
            st["drops"]
        ));
    }
}

#[test]
fn subnet_behind_peer() {
    if !common::netns_available("subnet_behind_peer") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("sn", 51822);
    lab.add_stub_link(&b.ns, "lan0");
    lab.ip_ok(&b.ns, &["addr", "add", "100.65.2.1/24", "dev", "lan0"]);
    lab.up_pair(&a, &b, &["100.65.2.0/24"], &[]);

    let routes = lab.ip_ok(&a.ns, &["route", "show", "100.65.2.0/24"]);
    if !routes.contains(&format!("dev {}", a.iface)) {
        lab.fail(format!(
            "A should route 100.65.2.0/24 (allowed_ips of B) via {}; `ip route show \
             100.65.2.0/24` printed {routes:?}",
            a.iface
        ));
    }
    lab.must_ping(&a, "100.65.2.1");
}

const SPOOF_PORT: u16 = 47002;

#[test]
fn spoofed_source_dropped() {
    if !common::netns_available("spoofed_source_dropped") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("sp", 51823);
    // B owns 100.99.0.1, which is not in B's allowed_ips at A.
    lab.add_stub_link(&b.ns, "spf0");
    lab.ip_ok(&b.ns, &["addr", "add", "100.99.0.1/32", "dev", "spf0"]);
    // Make sure A's kernel itself would accept the spoofed packet: only the daemon may drop it.
    lab.sysctl(&a.ns, "net/ipv4/conf/all/rp_filter", "0");
    lab.sysctl(&a.ns, "net/ipv4/conf/default/rp_filter", "0");
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&b, &a.v4);

    // Listener in A reports every datagram it gets until told to stop.
    let dst = SocketAddr::V4(SocketAddrV4::new(v4(&a.v4), SPOOF_PORT));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let stop2 = stop.clone();
    let listener = in_netns(&a.ns, move || {
        let sock = UdpSocket::bind(dst).map_err(|e| format!("bind {dst}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 2048];
        while !stop2.load(Ordering::Relaxed) && Instant::now() < give_up {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = tx.send((from, buf[..n].to_vec()));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        Ok(())
    });
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        let err = listener.join().expect("listener panicked").err();
        lab.fail(format!("UDP listener in A did not start: {err:?}"));
    }

    // Control: a datagram from B's legitimate overlay address arrives.
    let legit_src = SocketAddr::V4(SocketAddrV4::new(v4(&b.v4), 0));
    let mut arrived = false;
    'control: for _ in 0..5 {
        lab.send_udp(&b.ns, legit_src, dst, b"legit");
        let until = Instant::now() + Duration::from_secs(2);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((_, p)) if p == b"legit" => {
                    arrived = true;
                    break 'control;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    if !arrived {
        stop.store(true, Ordering::Relaxed);
        lab.fail(format!(
            "control datagram from {} to {dst} never arrived; the tunnel does not carry UDP, \
             so the spoofing check would prove nothing",
            b.v4
        ));
    }

    let before = lab.drop_counter(&lab.status(&a.iface), "bad_source");
    let spoof_src = SocketAddr::V4(SocketAddrV4::new(v4("100.99.0.1"), 0));
    for _ in 0..3 {
        lab.send_udp(&b.ns, spoof_src, dst, b"spoofed");
    }
    let mut leaked = Vec::new();
    let until = Instant::now() + Duration::from_millis(1500);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((from, p)) if p == b"spoofed" => leaked.push(from),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = listener.join().expect("listener panicked") {
        lab.fail(format!("UDP listener in A failed: {e}"));
    }
    if !leaked.is_empty() {
        lab.fail(format!(
            "datagrams with source 100.99.0.1 (outside B's allowed_ips) were delivered in A \
             from {leaked:?}; expected the daemon to drop them"
        ));
    }

    // The drop counter is updated by the daemon's data path; give it a moment (bounded).
    let mut after = before;
    for _ in 0..30 {
        after = lab.drop_counter(&lab.status(&a.iface), "bad_source");
        if after > before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if after <= before {
        lab.fail(format!(
            "A's drops.bad_source should have grown after 3 spoofed datagrams, \
             but stayed at {before} -> {after}"
        ));
    }
}

#[test]
fn udp_bursts_arrive_intact() {
    if !common::netns_available("udp_bursts_arrive_intact") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("ub", 51827);
    // B's tunnel socket gets room for whole bursts too: the merge is under test here, not how
    // a socket behind a daemon waiting for a core overflows (seen in CI beside the 64 MiB TCP
    // test: 86 GRO batches dropped there, 620 datagrams).
    lab.up(&a, &[(&b, &[])]);
    lab.up_with_interface_keys(&b, &a, "receive_buffer_bytes = 4194304");
    lab.must_ping(&a, &b.v4);
    // Likewise A's TUN queue (500 packets by default): a daemon that waits 25 ms for a core
    // while the suite's heavier tests run beside it (seen in CI: 502 dropped there, none by
    // dhtun) is not what this test is about.
    let queue = common::run(std::process::Command::new("ip").args([
        "-n",
        &a.ns,
        "link",
        "set",
        "dev",
        &a.iface,
        "txqueuelen",
        "5000",
    ]));
    if !queue.status.success() {
        lab.fail(format!(
            "setting A's txqueuelen: {}",
            common::describe(&queue)
        ));
    }
    let (before_a, before_b) = (lab.status(&a.iface), lab.status(&b.iface));
    let overflows_before = common::netns_udp_counter(&b.ns, "RcvbufErrors");
    let tun_drops_before = lab.tx_dropped(&a.ns, &a.iface);
    // Bursts of same-sized datagrams of one flow are what the receiver merges into one
    // UDP super-packet for its TUN device; every byte must come out as it went in.
    let dst = SocketAddr::V4(SocketAddrV4::new(v4(&b.v4), 5399));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    // The receiver stops after 500 ms without a datagram only once the sender is done: a
    // sender that waits that long for a core (seen in CI beside the 64 MiB TCP test and a
    // build) is not a loss.
    let sent_all = Arc::new(AtomicBool::new(false));
    let receiver_sees_sent_all = Arc::clone(&sent_all);
    let receiver = in_netns(&b.ns, move || {
        let sock = UdpSocket::bind(dst).map_err(|e| format!("bind {dst}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        // The tunnel is under test, not this socket: B writes a burst of 100 to its TUN device
        // in a super-packet or two, and while this thread waits for a core the default buffer
        // may overflow. Seen in CI with the 64 MiB TCP test beside it: 2467 of 3000 arrived.
        set_int_option(
            &sock,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            4 << 20,
            "SO_RCVBUFFORCE",
        )?;
        let _ = ready_tx.send(());
        let mut good = 0u32;
        let mut buf = [0u8; 2048];
        let give_up = Instant::now() + Duration::from_secs(30);
        while Instant::now() < give_up {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let Some(seq) = buf
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    else {
                        return Err(format!("a datagram of {n} bytes"));
                    };
                    if n != datagram_len(seq) || buf[4..n].iter().any(|&x| x != (seq as u8)) {
                        return Err(format!("datagram {seq} arrived corrupted ({n} bytes)"));
                    }
                    good += 1;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if receiver_sees_sent_all.load(Ordering::SeqCst) {
                        break;
                    }
                }
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        Ok(good)
    });
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        lab.fail("the UDP receiver in B did not start");
    }
    let src = SocketAddr::V4(SocketAddrV4::new(v4(&a.v4), 0));
    let sender = in_netns(&a.ns, move || {
        let sock = UdpSocket::bind(src).map_err(|e| format!("bind {src}: {e}"))?;
        for seq in 0..3000u32 {
            let mut datagram = vec![seq as u8; datagram_len(seq)];
            datagram[..4].copy_from_slice(&seq.to_be_bytes());
            sock.send_to(&datagram, dst)
                .map_err(|e| format!("send: {e}"))?;
            if seq % 100 == 99 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    });
    let sent = sender.join().expect("sender panicked");
    sent_all.store(true, Ordering::SeqCst);
    if let Err(e) = sent {
        lab.fail(format!("sending: {e}"));
    }
    match receiver.join().expect("receiver panicked") {
        Err(e) => lab.fail(e),
        // Bursts may overflow a socket now and then; what arrives must be intact, and most must.
        Ok(good) if good < 2500 => {
            let overflows = common::netns_udp_counter(&b.ns, "RcvbufErrors")
                .and_then(|after| Ok(after.saturating_sub(overflows_before?)));
            let tun_drops = lab
                .tx_dropped(&a.ns, &a.iface)
                .and_then(|after| Ok(after.saturating_sub(tun_drops_before?)));
            lab.fail(format!(
                "only {good} of 3000 datagrams arrived; dropped at A's full TUN queue: \
                 {tun_drops:?}; drops in A: {}; in B: {}; datagrams B's namespace dropped at \
                 full sockets (the tunnel's and the receiver's): {overflows:?}",
                common::drops_moved(&before_a, &lab.status(&a.iface)),
                common::drops_moved(&before_b, &lab.status(&b.iface)),
            ))
        }
        Ok(_) => {}
    }
}

/// Runs of equal sizes with a shorter one now and then, as a merge must handle them.
fn datagram_len(seq: u32) -> usize {
    if seq % 37 == 36 {
        200 + (seq as usize % 500)
    } else {
        1200
    }
}
