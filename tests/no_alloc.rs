//! The packet path allocates nothing: after the handshake, encrypting, decrypting, replay
//! checks, routing and timers run on buffers allocated at start-up. A counting global allocator
//! proves it for this test's thread.

use dhtun::core::device::{Device, DeviceConfig, NetworkAction, TunAction};
use dhtun::core::keys::{PresharedKey, SecretKey};
use dhtun::core::limits::{ring_slot_bytes, TIMER_TICK};
use dhtun::core::peer::PeerConfig;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const MTU: usize = 1420;

#[test]
fn steady_state_packet_path_does_not_allocate() {
    let a_addr: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    let b_addr: SocketAddr = "198.18.0.2:51820".parse().unwrap();
    let mut a = device(1, 2, "100.64.0.2/32", b_addr);
    let mut b = device(2, 1, "100.64.0.1/32", a_addr);
    let mut now = Duration::from_secs(1);
    let mut packet = vec![0u8; ring_slot_bytes(MTU)];
    let mut wire = vec![0u8; ring_slot_bytes(MTU)];
    let mut inner = vec![0u8; ring_slot_bytes(MTU)];

    // Handshake (allowed to allocate: snow builds its state on the heap once per handshake).
    write_ipv4(&mut packet, [100, 64, 0, 1], [100, 64, 0, 2], 100);
    assert_eq!(
        a.handle_tun_packet(&mut packet, 120, now, &mut wire),
        TunAction::Staged
    );
    let init = a.poll_transmit(now, &mut wire).unwrap();
    let NetworkAction::WriteToNetwork { len, .. } =
        b.handle_datagram(a_addr, &wire[..init.len], now, &mut inner)
    else {
        panic!("no response");
    };
    a.handle_datagram(b_addr, &inner[..len], now, &mut wire);
    while let Some(t) = a.poll_transmit(now, &mut wire) {
        b.handle_datagram(a_addr, &wire[..t.len], now, &mut inner);
    }

    let allocations = count_allocations(|| {
        for i in 0..20_000u32 {
            now += Duration::from_micros(50);
            let (from, to, src, dst, sender_addr) = if i % 2 == 0 {
                (&mut a, &mut b, [100, 64, 0, 1], [100, 64, 0, 2], a_addr)
            } else {
                (&mut b, &mut a, [100, 64, 0, 2], [100, 64, 0, 1], b_addr)
            };
            let len = 40 + (i as usize * 7) % 1300;
            write_ipv4(&mut packet, src, dst, len - 20);
            let TunAction::WriteToNetwork { len: sent, .. } =
                from.handle_tun_packet(&mut packet, len, now, &mut wire)
            else {
                panic!("packet {i} was not sent");
            };
            let action = to.handle_datagram(sender_addr, &wire[..sent], now, &mut inner);
            assert_eq!(action, NetworkAction::WriteToTun { len }, "packet {i}");
            if i % 200 == 0 {
                a.handle_timers(now);
                b.handle_timers(now);
                now += TIMER_TICK;
                while a.poll_transmit(now, &mut wire).is_some() {}
                while b.poll_transmit(now, &mut wire).is_some() {}
            }
        }
    });
    assert_eq!(
        allocations, 0,
        "the packet path allocated {allocations} times"
    );
}

fn device(own: u8, other: u8, allowed: &str, endpoint: SocketAddr) -> Device {
    Device::new(DeviceConfig {
        secret_key: SecretKey::from_seed([own; 32]),
        mtu: MTU,
        peers: vec![PeerConfig {
            public_key: SecretKey::from_seed([other; 32]).public_key(),
            preshared_key: PresharedKey::default(),
            allowed_ips: vec![allowed.parse().unwrap()],
            endpoint: Some(endpoint),
            persistent_keepalive: None,
            relay: false,
        }],
        wall_clock_at_zero: Duration::from_secs(1_700_000_000),
        rng_seed: [own; 32],
        serve_relay: false,
        pacing: true,
    })
}

fn write_ipv4(buf: &mut [u8], src: [u8; 4], dst: [u8; 4], payload: usize) {
    let total = 20 + payload;
    buf[..20].fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    buf[8] = 64;
    buf[9] = 17;
    buf[12..16].copy_from_slice(&src);
    buf[16..20].copy_from_slice(&dst);
}

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocations(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(|c| c.get())
}

struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note_allocation() {
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}
