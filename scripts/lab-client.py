#!/usr/bin/env python3
"""The lab's client (runs inside the client namespace). Python 3 standard library only.

lab-client.py http HOST PORT COUNT      COUNT new TCP connections, one HTTP GET each
lab-client.py udp HOST PORT COUNT       COUNT datagrams, each from a new socket (a new flow)
lab-client.py udp2 HOST PORT COUNT      COUNT flows of two datagrams each, from a new socket, both answered
                                        by the same backend (the balancer records a UDP flow by its second)
lab-client.py echo HOST PORT COUNT      COUNT new TCP connections to an echo service, one line each
lab-client.py upload HOST PORT COUNT MB COUNT connections to a count service, each sending MB MiB
                                        and checking the byte count the server answers
lab-client.py proxyhttp HOST PORT COUNT COUNT connections, one HTTP GET each, to a backend behind a PROXY v2
                                        service that answers "NAME CLIENT_ADDRESS CLIENT_PORT": each answer
                                        must name this connection's own address and port
lab-client.py banner HOST PORT COUNT    COUNT connections to a server that speaks first: its greeting
                                        "220 NAME CLIENT_ADDRESS CLIENT_PORT ready" (read before sending
                                        anything) must name this connection, then one line echoed
lab-client.py bigecho HOST PORT COUNT MB  COUNT connections to an echo service, each sending MB MiB of
                                        random bytes while reading them back: the same bytes (SHA-256)
lab-client.py download HOST PORT COUNT PATH  COUNT HTTP GETs of PATH; "backends" counts answers by the
                                        body's SHA-256 and length ("SHA256:BYTES")
  the proxy modes add "clients": ["ADDRESS PORT", ...], one per connection that succeeded
lab-client.py parallel KIND HOST PORT COUNT TIMEOUT
                                        COUNT of KIND (http, udp, echo) all at once, one thread each,
                                        each given TIMEOUT seconds (a burst of new flows at one instant)
  each prints one JSON object: {"sent", "ok", "failed", "backends": {NAME: n}, "errors": [...]}
lab-client.py dfudp HOST PORT SIZE      one connected UDP socket sending SIZE-byte datagrams with DF
  (IP_PMTUDISC_DO) every 0.1 s until the kernel's path MTU for HOST drops (an ICMP "fragmentation
  needed" / "packet too big" came back) or 3 s pass; prints {"sent", "mtu_before", "mtu", "errors"}
lab-client.py synflood HOST PORT COUNT PREFIX
lab-client.py udpflood HOST PORT COUNT PREFIX
  COUNT TCP SYNs (or UDP datagrams of 32 bytes) to HOST:PORT from sources spoofed at random in
  the IPv4 /16 PREFIX (e.g. 198.18.0.0) and random ports, through a raw socket, as fast as one
  thread sends them; prints {"sent", "seconds"}
lab-client.py session HOST PORT STATEFILE [INTERVAL]
  one long-lived TCP connection to an echo service: a line every INTERVAL seconds (0.2),
  each echo checked; STATEFILE is rewritten after every exchange with
  {"backend", "ok", "failed", "last_error", "closed"}. Runs until SIGTERM/SIGINT.
lab-client.py sessions HOST PORT COUNT STATEFILE [INTERVAL [TIMEOUT]]
  COUNT long-lived TCP connections to an echo service, in one thread: every INTERVAL
  seconds (0.3) a line on every connection still alive, each echo awaited TIMEOUT seconds (2).
  A connection that fails (reset, timeout, EOF, a wrong echo or another backend) is
  broken for good, never reopened. STATEFILE is rewritten after every round with
  {"connections", "opened", "rounds", "alive", "broken", "per_connection": [{"backend",
  "ok", "failed", "last_error", "closed"}...]}. Runs until SIGTERM/SIGINT.
"""
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time

TIMEOUT = 2.0


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def http_once(host, port, _n):
    return http_get(host, port, "/", TIMEOUT)[1].decode().strip()


def udp_flow(host, port, payloads):
    """One flow: each payload in turn from one new socket, each answer checked; all answered
    by one backend, whose name is returned."""
    names = set()
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        for payload in payloads:
            s.sendto(payload.encode(), (host, port))
            data, _ = s.recvfrom(2048)
            name, _, echoed = data.decode().partition(" ")
            if echoed != payload:
                raise RuntimeError(f"bad answer {data[:40]!r}")
            names.add(name)
    if len(names) != 1:
        raise RuntimeError(f"one flow answered by {sorted(names)}")
    return names.pop()


def udp_once(host, port, n):
    return udp_flow(host, port, [f"query-{n}"])


def udp2_once(host, port, n):
    return udp_flow(host, port, [f"query-{n}-1", f"query-{n}-2"])


def echo_once(host, port, n):
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        line = f"hello-{n}\n"
        s.sendall(line.encode())
        answer = s.makefile("rb").readline().decode()
    name, _, echoed = answer.partition(" ")
    if echoed != line:
        raise RuntimeError(f"bad echo {answer[:40]!r}")
    return name


def upload_once(host, port, _n, mbytes):
    size = mbytes << 20
    with socket.create_connection((host, port), timeout=10) as s:
        block = b"u" * 65536
        for _ in range(size // len(block)):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        answer = s.makefile("rb").readline().decode()
    name, _, count = answer.strip().partition(" ")
    if count != str(size):
        raise RuntimeError(f"sent {size} bytes, the server answered {answer[:60]!r}")
    return name


def own_address(s):
    """This end of a connection as a PROXY header names it: "ADDRESS PORT"."""
    local = s.getsockname()
    return f"{local[0]} {local[1]}"


def http_get(host, port, path, timeout):
    """One HTTP/1.0 GET on a new connection: (this end as "ADDRESS PORT", the body of a 200)."""
    with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        me = own_address(s)
        hosthdr = f"[{host}]" if ":" in host else host
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {hosthdr}\r\nUser-Agent: sluice-lab\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    # lab-server.py answers HTTP/1.0, nginx HTTP/1.1.
    if not (head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")):
        raise RuntimeError(f"bad response {head[:40]!r}")
    return me, body


def proxyhttp_once(host, port, _n):
    me, body = http_get(host, port, "/", TIMEOUT)
    name, _, seen = body.decode().strip().partition(" ")
    if seen != me:
        raise RuntimeError(f"{name} saw the client as {seen!r}, it is {me!r}")
    return name, me


def banner_once(host, port, n):
    with socket.create_connection((host, port), timeout=TIMEOUT * 3) as s:
        me = own_address(s)
        lines = s.makefile("rb")
        greeting = lines.readline().decode().strip()
        parts = greeting.split(" ")
        if len(parts) != 5 or parts[0] != "220" or parts[4] != "ready":
            raise RuntimeError(f"bad greeting {greeting!r}")
        if f"{parts[2]} {parts[3]}" != me:
            raise RuntimeError(f"{parts[1]} greeted the client as {parts[2]} {parts[3]}, it is {me}")
        s.sendall(f"hello-{n}\n".encode())
        if lines.readline().decode() != f"{parts[1]} hello-{n}\n":
            raise RuntimeError("bad echo after the greeting")
    return parts[1], me


def bigecho_once(host, port, _n, mbytes):
    import hashlib
    payload = os.urandom(mbytes * 1024 * 1024)
    received = hashlib.sha256()
    count = 0
    with socket.create_connection((host, port), timeout=TIMEOUT * 5) as s:
        me = own_address(s)

        def send():
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            received.update(chunk)
            count += len(chunk)
        sender.join(TIMEOUT * 5)
    if count != len(payload) or received.digest() != hashlib.sha256(payload).digest():
        raise RuntimeError(f"echoed {count} of {len(payload)} bytes, SHA-256 {'differs' if count == len(payload) else 'short'}")
    return "echo", me


def download_once(host, port, _n, path):
    import hashlib
    me, body = http_get(host, port, path, TIMEOUT * 5)
    return f"{hashlib.sha256(body).hexdigest()}:{len(body)}", me


ONCE = {"http": http_once, "udp": udp_once, "udp2": udp2_once, "echo": echo_once, "upload": upload_once,
        "proxyhttp": proxyhttp_once, "banner": banner_once, "bigecho": bigecho_once, "download": download_once}


def df_udp(host, port, size):
    v6 = family_of(host) == socket.AF_INET6
    # <netinet/in.h>: IP_MTU_DISCOVER 10, IP_MTU 14, IPV6_MTU_DISCOVER 23, IPV6_MTU 24; *_PMTUDISC_DO 2
    level, discover, mtu_opt = (socket.IPPROTO_IPV6, 23, 24) if v6 else (socket.IPPROTO_IP, 10, 14)
    result = {"sent": 0, "mtu_before": None, "mtu": None, "errors": []}
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        s.setsockopt(level, discover, 2)
        s.connect((host, port))
        result["mtu_before"] = result["mtu"] = s.getsockopt(level, mtu_opt)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and result["mtu"] == result["mtu_before"]:
            try:
                s.send(b"d" * size)
                result["sent"] += 1
            except OSError as e:  # EMSGSIZE once the ICMP answer is in
                if len(result["errors"]) < 5:
                    result["errors"].append(repr(e))
            time.sleep(0.1)
            result["mtu"] = s.getsockopt(level, mtu_opt)
    print(json.dumps(result, sort_keys=True))
    return 0 if result["mtu"] < result["mtu_before"] else 1


def burst(kind, host, port, count, *extra):
    result = {"sent": count, "ok": 0, "failed": 0, "backends": {}, "errors": []}
    for n in range(count):
        try:
            name = ONCE[kind](host, port, n, *extra)
            if isinstance(name, tuple):
                name, client = name
                result.setdefault("clients", []).append(client)
            result["ok"] += 1
            result["backends"][name] = result["backends"].get(name, 0) + 1
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            result["failed"] += 1
            if len(result["errors"]) < 5:
                result["errors"].append(f"#{n}: {e!r}")
    print(json.dumps(result, sort_keys=True))
    return 0 if result["failed"] == 0 else 1


def parallel(kind, host, port, count, timeout):
    global TIMEOUT
    TIMEOUT = timeout
    result = {"sent": count, "ok": 0, "failed": 0, "backends": {}, "errors": []}
    lock = threading.Lock()
    start = threading.Barrier(count)

    def one(n):
        try:
            start.wait()
            name = ONCE[kind](host, port, n)
            with lock:
                result["ok"] += 1
                result["backends"][name] = result["backends"].get(name, 0) + 1
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            with lock:
                result["failed"] += 1
                if len(result["errors"]) < 5:
                    result["errors"].append(f"#{n}: {e!r}")

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(result, sort_keys=True))
    return 0 if result["failed"] == 0 else 1


class StopOnSignal:
    """`on` until SIGTERM or SIGINT: long-running modes finish their round, save and exit."""

    def __init__(self):
        self.on = True
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def stop(self, *_):
        self.on = False


def session(host, port, statefile, interval):
    state = {"backend": None, "ok": 0, "failed": 0, "last_error": None, "closed": False}
    running = StopOnSignal()

    def save():
        tmp = statefile + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, statefile)

    s = socket.create_connection((host, port), timeout=TIMEOUT)
    lines = s.makefile("rb")
    n = 0
    while running.on:
        n += 1
        try:
            line = f"line-{n}\n".encode()
            s.sendall(line)
            answer = lines.readline()
            if not answer:
                raise RuntimeError("connection closed by peer")
            name, _, echoed = answer.decode().partition(" ")
            if echoed.encode() != line:
                raise RuntimeError(f"bad echo {answer[:40]!r}")
            if state["backend"] is None:
                state["backend"] = name
            elif state["backend"] != name:
                raise RuntimeError(f"answered by {name}, not {state['backend']}")
            state["ok"] += 1
        except Exception as e:  # noqa: BLE001
            state["failed"] += 1
            state["last_error"] = repr(e)
            save()
            break
        save()
        time.sleep(interval)
    s.close()
    state["closed"] = True
    save()
    return 0


class Conn:
    """One connection of `sessions`: its socket, what it expects back, its record."""

    def __init__(self, index):
        self.index = index
        self.sock = None
        self.pending = b""   # the line sent this round, until its echo is checked
        self.buffer = b""    # what arrived of the echo so far
        self.record = {"backend": None, "ok": 0, "failed": 0, "last_error": None, "closed": False}

    @property
    def alive(self):
        return self.sock is not None

    def fail(self, error):
        self.record["failed"] += 1
        self.record["last_error"] = error
        self.close()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.record["closed"] = True

    def check(self, answer):
        name, _, echoed = answer.decode(errors="replace").partition(" ")
        if echoed.encode() != self.pending:
            raise RuntimeError(f"bad echo {answer[:40]!r}")
        if self.record["backend"] is None:
            self.record["backend"] = name
        elif self.record["backend"] != name:
            raise RuntimeError(f"answered by {name}, not {self.record['backend']}")
        self.record["ok"] += 1
        self.pending = b""


def sessions(host, port, count, statefile, interval):
    running = StopOnSignal()

    conns = [Conn(i) for i in range(count)]
    opened = 0
    rounds = 0

    def save():
        state = {
            "connections": count,
            "opened": opened,
            "rounds": rounds,
            "alive": sum(1 for c in conns if c.alive),
            "broken": sum(1 for c in conns if c.record["failed"] > 0),
            "per_connection": [c.record for c in conns],
        }
        tmp = statefile + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, statefile)

    for c in conns:
        if not running.on:
            break
        try:
            c.sock = socket.create_connection((host, port), timeout=TIMEOUT)
            c.sock.setblocking(False)
            opened += 1
        except Exception as e:  # noqa: BLE001 - a connection that cannot open is broken
            c.fail(repr(e))
    save()

    selector = selectors.DefaultSelector()
    while running.on:
        started = time.monotonic()
        rounds += 1
        waiting = {}
        for c in conns:
            if not c.alive:
                continue
            c.pending = f"conn-{c.index}-round-{rounds}\n".encode()
            c.buffer = b""
            try:
                # A line this short fits in any socket buffer: one send is all of it.
                if c.sock.send(c.pending) != len(c.pending):
                    raise RuntimeError("short send")
            except Exception as e:  # noqa: BLE001
                c.fail(repr(e))
                continue
            selector.register(c.sock, selectors.EVENT_READ, c)
            waiting[c.index] = c
        deadline = time.monotonic() + TIMEOUT
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in selector.select(left):
                c = key.data
                try:
                    chunk = c.sock.recv(4096)
                    if not chunk:
                        raise RuntimeError("connection closed by peer")
                    c.buffer += chunk
                    if b"\n" not in c.buffer:
                        continue
                    answer, _, rest = c.buffer.partition(b"\n")
                    if rest:
                        raise RuntimeError(f"more than one line {c.buffer[:60]!r}")
                    c.check(answer + b"\n")
                except Exception as e:  # noqa: BLE001
                    selector.unregister(c.sock)
                    del waiting[c.index]
                    c.fail(repr(e))
                    continue
                selector.unregister(c.sock)
                del waiting[c.index]
        for c in waiting.values():
            selector.unregister(c.sock)
            c.fail(f"no echo within {TIMEOUT} s")
        save()
        # A signal during the sleep ends it early (PEP 475 retries, but `running` is checked).
        pause = interval - (time.monotonic() - started)
        while running.on and pause > 0:
            time.sleep(min(pause, 0.05))
            pause = interval - (time.monotonic() - started)
    for c in conns:
        c.close()
    save()
    return 0


def flood(kind, host, port, count, prefix):
    """Spoofed-source packets through a raw socket (the kernel fills in the IPv4 header's
    length and checksum); each packet's L4 checksum is computed over its own source."""
    import random
    import struct
    base = struct.unpack("!I", socket.inet_aton(prefix))[0] & 0xFFFF0000
    dst = socket.inet_aton(host)
    proto = socket.IPPROTO_TCP if kind == "synflood" else socket.IPPROTO_UDP
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rng = random.Random(count)

    def checksum(data):
        if len(data) % 2:
            data += b"\0"
        total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    started = time.monotonic()
    for _ in range(count):
        src = struct.pack("!I", base | rng.randrange(1, 0xFFFF))
        sport = rng.randrange(1024, 65536)
        if proto == socket.IPPROTO_TCP:
            l4 = struct.pack("!HHIIBBHHH", sport, port, rng.getrandbits(32), 0, 5 << 4, 0x02, 65535, 0, 0)
            at = 16
        else:
            l4 = struct.pack("!HHHH", sport, port, 8 + 32, 0) + bytes(32)
            at = 6
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(l4))
        l4 = l4[:at] + struct.pack("!H", checksum(pseudo + l4)) + l4[at + 2:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, proto, 0, src, dst)
        sock.sendto(ip + l4, (host, 0))
    print(json.dumps({"sent": count, "seconds": round(time.monotonic() - started, 3)}))
    return 0


def take_signals():
    """A parent may have left SIGTERM and SIGINT blocked (threads of Swift's runtime
    do, and a child inherits the mask): `lab.sh down` and Ctrl-C must still end us."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv):
    take_signals()
    mode = argv[1]
    if mode == "parallel" and len(argv) == 7 and argv[2] in ("http", "udp", "echo"):
        return parallel(argv[2], argv[3], int(argv[4]), int(argv[5]), float(argv[6]))
    host, port = argv[2], int(argv[3])
    if mode in ("upload", "bigecho"):
        return burst(mode, host, port, int(argv[4]), int(argv[5]))
    if mode == "download":
        return burst(mode, host, port, int(argv[4]), argv[5])
    if mode in ONCE:
        return burst(mode, host, port, int(argv[4]))
    if mode in ("synflood", "udpflood"):
        return flood(mode, host, port, int(argv[4]), argv[5])
    if mode == "dfudp":
        return df_udp(host, port, int(argv[4]))
    if mode == "session":
        return session(host, port, argv[4], float(argv[5]) if len(argv) > 5 else 0.2)
    if mode == "sessions":
        if len(argv) > 7:  # how long a round waits for its echo before the session counts as broken
            global TIMEOUT
            TIMEOUT = float(argv[7])
        return sessions(host, port, int(argv[4]), argv[5], float(argv[6]) if len(argv) > 6 else 0.3)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
