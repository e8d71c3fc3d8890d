#!/usr/bin/env bash
# Benchmark userspace mode (mode = "userspace") between two network namespaces on one machine.
#
#   sudo bash netns-scripts/userspace-bench.sh [SECONDS]    (default 10 s per measurement)
#
# Measures, from namespace A to namespace B over the veth pair:
#   1. one TCP connection through A's [[forward]] and B's [[expose]] (userspace at both ends);
#   2. one TCP connection from A as a TUN peer (the kernel's TCP) to B's [[expose]];
#   3. peak RSS (VmHWM) of both userspace daemons: after (1), then under a flood of 16 parallel
#      connections sending as fast as they can, then with more connections than the stack's cap
#      (USERSPACE_MAX_TCP_SOCKETS, 128) open at once, each with full buffers (the service at B
#      accepts but never reads), which is the worst case for memory.
# The sender and the sink are small Python programs (written to the work directory): the sender
# reports bytes and Mbit/s. Needs root only for the namespaces; the daemons need none.
# Traffic goes only to the namespaces this script creates. Everything is removed when it exits.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"

SECONDS_EACH=${1:-10}
need_root "$0"
ensure_tun
have python3 || die "python3 is needed for the sender and the sink"
LAB_TAG=usb
lab_init

cat >"${LAB_WORK}/tcp.py" <<'EOF'
import socket, sys, time, threading
mode = sys.argv[1]
if mode == "sink":  # sink PORT [noread]: accept for ever; read and discard (or hold unread)
    port, read = int(sys.argv[2]), len(sys.argv) < 4
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port)); srv.listen(1024)
    held = []
    def drain(c):
        while c.recv(1 << 20):
            pass
    while True:
        c, _ = srv.accept()
        if read:
            threading.Thread(target=drain, args=(c,), daemon=True).start()
        else:
            held.append(c)
elif mode == "send":  # send HOST PORT SECONDS STREAMS: Mbit/s of STREAMS parallel connections
    host, port, secs, streams = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    total = [0] * streams
    def run(i):
        s = socket.create_connection((host, port), timeout=10)
        buf = b"x" * (256 * 1024); end = time.time() + secs
        while time.time() < end:
            total[i] += s.send(buf)
        s.close()
    start = time.time()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    [t.start() for t in ts]; [t.join() for t in ts]
    print("%.0f" % (sum(total) * 8 / (time.time() - start) / 1e6))
elif mode == "hold":  # hold HOST PORT COUNT SECONDS: open COUNT connections, fill them, count refusals
    host, port, count, secs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    socks, refused = [], 0
    for _ in range(count):
        try:
            s = socket.create_connection((host, port), timeout=5); s.setblocking(False); socks.append(s)
        except OSError:
            refused += 1
    end, buf = time.time() + secs, b"y" * 65536
    while time.time() < end and socks:
        for s in list(socks):
            try:
                s.send(buf)
            except BlockingIOError:
                pass
            except OSError:
                refused += 1; socks.remove(s)
        time.sleep(0.01)
    print(len(socks), refused)
EOF

hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

lab_ns_pair
NS_A=$(lab_ns a)
NS_B=$(lab_ns b)
lab_keypair a
lab_keypair b

start_b_userspace() {
    IFACE_B=$(lab_iface B)
    LAB_IFACE_EXTRA='mode = "userspace"' lab_config "${LAB_WORK}/b.toml" "${IFACE_B}" b \
        "100.64.0.2/24,fd64::2/64" 51820 a "100.64.0.1/32,fd64::1/128" "198.18.0.1:51820"
    printf '\n[[expose]]\nport = 9001\nto = "127.0.0.1:9002"\n' >>"${LAB_WORK}/b.toml"
    printf '\n[[expose]]\nport = 9003\nto = "127.0.0.1:9004"\n' >>"${LAB_WORK}/b.toml"
    lab_up "${NS_B}" "${IFACE_B}" "${LAB_WORK}/b.toml"
    PID_B=${LAB_DAEMON_PIDS[-1]}
}

ip netns exec "${NS_B}" python3 "${LAB_WORK}/tcp.py" sink 9002 &
ip netns exec "${NS_B}" python3 "${LAB_WORK}/tcp.py" sink 9004 noread &
sleep 0.5

log "1. userspace at both ends: one TCP connection through a forward and an expose"
IFACE_A=$(lab_iface A)
LAB_IFACE_EXTRA='mode = "userspace"' lab_config "${LAB_WORK}/a.toml" "${IFACE_A}" a \
    "100.64.0.1/24,fd64::1/64" 51820 b "100.64.0.2/32,fd64::2/128" "198.18.0.2:51820"
printf '\n[[forward]]\nlisten = "127.0.0.1:9000"\nto = "100.64.0.2:9001"\n' >>"${LAB_WORK}/a.toml"
printf '\n[[forward]]\nlisten = "127.0.0.1:9010"\nto = "100.64.0.2:9003"\n' >>"${LAB_WORK}/a.toml"
lab_up "${NS_A}" "${IFACE_A}" "${LAB_WORK}/a.toml"
PID_A=${LAB_DAEMON_PIDS[-1]}
start_b_userspace
one_us=$(ip netns exec "${NS_A}" python3 "${LAB_WORK}/tcp.py" send 127.0.0.1 9000 "${SECONDS_EACH}" 1)
hwm_one="$(hwm "${PID_A}") / $(hwm "${PID_B}")"

log "3a. flood: 16 connections at once through the forward"
flood=$(ip netns exec "${NS_A}" python3 "${LAB_WORK}/tcp.py" send 127.0.0.1 9000 "${SECONDS_EACH}" 16)
hwm_flood="$(hwm "${PID_A}") / $(hwm "${PID_B}")"

log "3b. 200 connections (cap 128), each filled, to a service that never reads"
ip netns exec "${NS_A}" python3 "${LAB_WORK}/tcp.py" hold 127.0.0.1 9010 200 "${SECONDS_EACH}" \
    >"${LAB_WORK}/held" &
holder=$!
sleep "$((SECONDS_EACH / 2 + 1))"
status_cap=$("${DHTUN_BIN}" status "${IFACE_A}" | grep -E 'mode|forward' || true)
wait "${holder}"
held=$(cat "${LAB_WORK}/held")
hwm_cap="$(hwm "${PID_A}") / $(hwm "${PID_B}")"

log "2. TUN peer A to userspace peer B: one TCP connection to the expose"
lab_stop_all
IFACE_A=$(lab_iface C)
lab_config "${LAB_WORK}/c.toml" "${IFACE_A}" a "100.64.0.1/24,fd64::1/64" 51820 \
    b "100.64.0.2/32,fd64::2/128" "198.18.0.2:51820"
lab_up "${NS_A}" "${IFACE_A}" "${LAB_WORK}/c.toml"
start_b_userspace
lab_ping "${NS_A}" 100.64.0.2 5 >/dev/null 2>&1 || true
tun_us=$(ip netns exec "${NS_A}" python3 "${LAB_WORK}/tcp.py" send 100.64.0.2 9001 "${SECONDS_EACH}" 1)

cat <<EOF

userspace mode, ${SECONDS_EACH} s per figure ($(nproc) cores, $(uname -r))
  one TCP connection, forward -> expose (userspace both ends):  ${one_us} Mbit/s
  one TCP connection, TUN peer -> userspace expose:             ${tun_us} Mbit/s
  16 connections at once through the forward:                   ${flood} Mbit/s
  peak RSS (VmHWM, KiB) of A / B:
    after one connection:                                       ${hwm_one}
    after the 16-connection flood:                              ${hwm_flood}
    200 connections held full (open, refused: ${held}):    ${hwm_cap}
  A's status with the cap reached:
${status_cap}
EOF
