#!/usr/bin/env python3
"""A lab backend: the real servers behind the Sluice VIPs (runs inside a backend namespace).

lab-server.py NAME LOGFILE SPEC...   where SPEC is PROTO:ADDRESS:PORT (IPv6 in brackets)

  tcp-http  answers every HTTP request with "NAME\\n"
  udp       answers every datagram with "NAME <datagram>"
  tcp-echo  answers every line with "NAME <line>" (a long-lived connection)
  tcp-count reads until the client shuts its side, then answers "NAME <bytes read>"
  proxy-banner  reads a PROXY v2 header first, then speaks first (a server-speaks-first
            protocol, as SMTP): "220 NAME CLIENT_ADDRESS CLIENT_PORT ready", then answers
            every line with "NAME <line>"
  proxy-echo    reads a PROXY v2 header first, then echoes every byte back until the
            client shuts its side (an upload and a download of the same bytes)

Every request, datagram or connection appends "PROTO VIP:PORT CLIENT_ADDRESS" to LOGFILE:
with direct server return the backend sees the client's real address. The proxy- servers
append "PROTO LOCAL:PORT PEER_ADDRESS CLIENT_ADDRESS:CLIENT_PORT", the last from the header
(or "bad-header" and what arrived instead).
Python 3 standard library only (Debian's python3).
"""
import signal
import socket
import sys
import threading

NAME, LOGFILE = sys.argv[1], sys.argv[2]
log_lock = threading.Lock()


def log(proto, local, peer):
    with log_lock, open(LOGFILE, "a") as f:
        f.write(f"{proto} {local[0]}:{local[1]} {peer[0]}\n")


def parse(spec):
    proto, rest = spec.split(":", 1)
    host, port = rest.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return proto, family, host, int(port)


def listen(family, kind, host, port):
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    if kind == socket.SOCK_STREAM:
        s.listen(512)
    return s


def http_conn(conn, local, peer):
    with conn:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        log("http", local, peer)
        body = (NAME + "\n").encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\nX-Backend: %s\r\n\r\n%s" % (len(body), NAME.encode(), body))


def echo_conn(conn, local, peer):
    log("echo", local, peer)
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            conn.sendall(NAME.encode() + b" " + line)


def count_conn(conn, local, peer):
    log("count", local, peer)
    with conn:
        conn.settimeout(30)
        total = 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            total += len(chunk)
        conn.sendall(f"{NAME} {total}\n".encode())


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def recv_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_proxy_v2(conn, proto, local, peer):
    """The client's address and port from a PROXY v2 header (HAProxy's spec, 2.2), or None
    (logged as bad-header) when the stream does not start with one."""
    head = recv_exactly(conn, 16)
    if head[:12] != PROXY_V2_SIGNATURE or head[12] != 0x21 or head[13] not in (0x11, 0x21):
        with log_lock, open(LOGFILE, "a") as f:
            f.write(f"{proto} {local[0]}:{local[1]} {peer[0]} bad-header {head.hex()}\n")
        return None
    body = recv_exactly(conn, int.from_bytes(head[14:16], "big"))
    family, size = (socket.AF_INET, 4) if head[13] == 0x11 else (socket.AF_INET6, 16)
    client = socket.inet_ntop(family, body[:size])
    port = int.from_bytes(body[2 * size:2 * size + 2], "big")
    with log_lock, open(LOGFILE, "a") as f:
        f.write(f"{proto} {local[0]}:{local[1]} {peer[0]} {client}:{port}\n")
    return client, port


def proxy_banner_conn(conn, local, peer):
    with conn:
        conn.settimeout(30)
        found = read_proxy_v2(conn, "proxy-banner", local, peer)
        if not found:
            return
        conn.sendall(f"220 {NAME} {found[0]} {found[1]} ready\r\n".encode())
        with conn.makefile("rb") as lines:
            for line in lines:
                conn.sendall(NAME.encode() + b" " + line)


def proxy_echo_conn(conn, local, peer):
    with conn:
        conn.settimeout(30)
        if not read_proxy_v2(conn, "proxy-echo", local, peer):
            return
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            conn.sendall(chunk)


HANDLERS = {"tcp-http": http_conn, "tcp-echo": echo_conn, "tcp-count": count_conn,
            "proxy-banner": proxy_banner_conn, "proxy-echo": proxy_echo_conn}


def serve_tcp(sock, handler):
    local = sock.getsockname()
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=handler, args=(conn, local, peer), daemon=True).start()


def serve_udp(sock):
    local = sock.getsockname()
    while True:
        data, peer = sock.recvfrom(2048)
        log("udp", local, peer)
        sock.sendto(NAME.encode() + b" " + data, peer)


def take_signals():
    """A parent may have left SIGTERM and SIGINT blocked (threads of Swift's runtime
    do, and a child inherits the mask): `lab.sh down` and Ctrl-C must still end us."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main():
    take_signals()
    threads = []
    for spec in sys.argv[3:]:
        proto, family, host, port = parse(spec)
        if proto == "udp":
            target, args = serve_udp, (listen(family, socket.SOCK_DGRAM, host, port),)
        else:
            target, args = serve_tcp, (listen(family, socket.SOCK_STREAM, host, port), HANDLERS[proto])
        threads.append(threading.Thread(target=target, args=args, daemon=True))
    for t in threads:
        t.start()
    print(f"{NAME}: serving {' '.join(sys.argv[3:])}", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
