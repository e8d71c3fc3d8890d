//! How `sendmmsg` batches are built: which datagrams travel together as a GSO train.

use super::*;
use std::time::Duration;

fn ring_to(destinations: &[(SocketAddr, usize)]) -> PacketRing<Option<SocketAddr>> {
    let mut ring = PacketRing::new(64, 2048);
    for &(to, count) in destinations {
        for _ in 0..count {
            let pushed = ring.push(&[0u8; 1000], Some(to), Duration::ZERO);
            assert!(pushed.is_ok(), "the test ring has room");
        }
    }
    ring
}

#[tokio::test(flavor = "current_thread")]
async fn a_path_that_refused_a_train_gets_single_datagrams_and_others_keep_their_trains() {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("loopback socket");
    let mut udp = UdpIo::new(socket, 128);
    if !udp.gso {
        eprintln!("SKIP: this kernel has no UDP GSO, so there are no trains to check");
        return;
    }
    let small_path: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let full_path: SocketAddr = "127.0.0.1:10".parse().expect("address");
    let now = Instant::now();
    let ring = ring_to(&[(small_path, 3), (full_path, 4)]);
    let messages = udp.build_batch(&ring, now);
    assert_eq!(&udp.send_counts[..messages], &[3, 4], "before any refusal");

    udp.refused_train(Some(small_path), 1000, now, &io::Error::other("test"));
    let messages = udp.build_batch(&ring, now);
    assert_eq!(
        &udp.send_counts[..messages],
        &[1, 1, 1, 4],
        "only the refusing path loses its trains"
    );

    let later = now + crate::core::limits::GSO_LIMIT_LIFETIME;
    let messages = udp.build_batch(&ring, later);
    assert_eq!(
        &udp.send_counts[..messages],
        &[3, 4],
        "after the limit expired"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_destination_the_kernel_refuses_leaves_gso_on_for_every_other() {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("loopback socket");
    let mut udp = UdpIo::new(socket, 128);
    if !udp.gso {
        eprintln!("SKIP: this kernel has no UDP GSO, so there are no trains to check");
        return;
    }
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("loopback receiver");
    let good = receiver.local_addr().expect("receiver address");
    // The kernel refuses any send to port 0 with EINVAL, train or not.
    let bad: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut ring = ring_to(&[(bad, 3), (good, 4)]);
    let mut failed = 0;
    for _ in 0..10 {
        // tokio knows the socket writable only once epoll said so.
        udp.writable().await.expect("writable");
        failed += udp.send_from(&mut ring).failed;
        if ring.is_empty() {
            break;
        }
    }
    assert_eq!(failed, 3, "the datagrams to port 0 are dropped");
    assert!(ring.is_empty(), "the good destination's datagrams went out");
    assert!(
        udp.gso_enabled(),
        "one bad destination must not turn GSO off"
    );

    let now = Instant::now();
    let ring = ring_to(&[(bad, 3), (good, 4)]);
    let messages = udp.build_batch(&ring, now);
    assert_eq!(
        &udp.send_counts[..messages],
        &[1, 1, 1, 4],
        "only the refused destination loses its trains"
    );
    let mut buf = [0u8; 2048];
    receiver
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    for i in 0..4 {
        let n = receiver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} to the good destination: {e}"));
        assert_eq!(n, 1000);
    }
}
