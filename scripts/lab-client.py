#!/usr/bin/env python3
"""The lab's client (runs inside the client namespace). Python 3 standard library only.

lab-client.py http HOST PORT COUNT      COUNT new TCP connections, one HTTP GET each
lab-client.py udp HOST PORT COUNT       COUNT datagrams, each from a new socket (a new flow)
lab-client.py echo HOST PORT COUNT      COUNT new TCP connections to an echo service, one line each
  each prints one JSON object: {"sent", "ok", "failed", "backends": {NAME: n}, "errors": [...]}
lab-client.py session HOST PORT STATEFILE [INTERVAL]
  one long-lived TCP connection to an echo service: a line every INTERVAL seconds (0.2),
  each echo checked; STATEFILE is rewritten after every exchange with
  {"backend", "ok", "failed", "last_error", "closed"}. Runs until SIGTERM/SIGINT.
"""
import json
import os
import signal
import socket
import sys
import time

TIMEOUT = 2.0


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def http_once(host, port, _n):
    with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect((host, port))
        hosthdr = f"[{host}]" if ":" in host else host
        s.sendall(f"GET / HTTP/1.0\r\nHost: {hosthdr}\r\nUser-Agent: sluice-lab\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(f"bad response {head[:40]!r}")
    return body.decode().strip()


def udp_once(host, port, n):
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        payload = f"query-{n}"
        s.sendto(payload.encode(), (host, port))
        data, _ = s.recvfrom(2048)
    name, _, echoed = data.decode().partition(" ")
    if echoed != payload:
        raise RuntimeError(f"bad answer {data[:40]!r}")
    return name


def echo_once(host, port, n):
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        line = f"hello-{n}\n"
        s.sendall(line.encode())
        answer = s.makefile("rb").readline().decode()
    name, _, echoed = answer.partition(" ")
    if echoed != line:
        raise RuntimeError(f"bad echo {answer[:40]!r}")
    return name


ONCE = {"http": http_once, "udp": udp_once, "echo": echo_once}


def burst(kind, host, port, count):
    result = {"sent": count, "ok": 0, "failed": 0, "backends": {}, "errors": []}
    for n in range(count):
        try:
            name = ONCE[kind](host, port, n)
            result["ok"] += 1
            result["backends"][name] = result["backends"].get(name, 0) + 1
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            result["failed"] += 1
            if len(result["errors"]) < 5:
                result["errors"].append(f"#{n}: {e!r}")
    print(json.dumps(result, sort_keys=True))
    return 0 if result["failed"] == 0 else 1


def session(host, port, statefile, interval):
    state = {"backend": None, "ok": 0, "failed": 0, "last_error": None, "closed": False}
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def save():
        tmp = statefile + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, statefile)

    s = socket.create_connection((host, port), timeout=TIMEOUT)
    lines = s.makefile("rb")
    n = 0
    while running:
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


def take_signals():
    """A parent may have left SIGTERM and SIGINT blocked (threads of Swift's runtime
    do, and a child inherits the mask): `lab.sh down` and Ctrl-C must still end us."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv):
    take_signals()
    mode = argv[1]
    host, port = argv[2], int(argv[3])
    if mode in ONCE:
        return burst(mode, host, port, int(argv[4]))
    if mode == "session":
        return session(host, port, argv[4], float(argv[5]) if len(argv) > 5 else 0.2)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
