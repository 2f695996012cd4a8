#!/usr/bin/env python3
"""`make demo`: real TCP and UDP conversations through a Sluice balancer in a namespace lab.

scripts/demo.py [--name NAME] [--requests N]

Brings up a lab (scripts/lab.sh: a client, a router, the balancer and three backends),
sends HTTP requests and UDP queries from the client to the VIPs, and shows that:
  - each backend got its weight's share of new connections;
  - the backends saw the client's real address;
  - replies went straight from the backends to the client (the balancer's interface
    carried only the inbound packets);
  - a long-lived TCP connection survives `lbctl apply` of a changed backend set, and a
    drain of its own backend.
Prints `lbctl stats` and `lbctl status` on the way. Exits 0 only if every check held.
The lab is torn down on exit, on failure and on Ctrl-C. Python 3 standard library only.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(REPO, "scripts", "lab.sh")


class Demo:
    def __init__(self, name, requests):
        self.name = name
        self.requests = requests
        self.info = {}
        self.results = []  # (check, passed, detail)

    # --- the lab ---------------------------------------------------------------------
    def lab(self, *args, capture=True):
        proc = subprocess.run([LAB, args[0], self.name, *args[1:]], text=True,
                              stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"lab.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout or ''}")
        return proc.stdout

    def client(self, kind, host, port, count):
        proc = subprocess.run([LAB, "client", self.name, kind, host, str(port), str(count)],
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if not proc.stdout.strip():
            raise RuntimeError(f"client {kind} {host}:{port} printed nothing:\n{proc.stderr}")
        return json.loads(proc.stdout)

    def lbctl_json(self, *args):
        return json.loads(self.lab("lbctl", *args, "--json"))

    def link_stats(self, node, iface):
        out = subprocess.run(["ip", "-n", self.info[f"{node}_ns"], "-j", "-s", "link", "show", "dev", iface],
                             check=True, text=True, stdout=subprocess.PIPE).stdout
        s = json.loads(out)[0]["stats64"]
        return {"rx": s["rx"]["packets"], "tx": s["tx"]["packets"]}

    # --- output ----------------------------------------------------------------------
    @staticmethod
    def section(title):
        print(f"\n=== {title}")

    def check(self, what, passed, detail=""):
        self.results.append((what, passed, detail))
        print(f"  [{'ok' if passed else 'FAIL'}] {what}" + (f" ({detail})" if detail else ""))

    # --- the steps -------------------------------------------------------------------
    def spread(self, title, kind, host, port, weights, count):
        """COUNT new flows to one VIP; checks all succeeded and the shares follow the weights."""
        what = {"http": "HTTP requests", "udp": "UDP queries"}.get(kind, "connections")
        self.section(f"{title}: {count} {what} to {f'[{host}]' if ':' in host else host}:{port}")
        r = self.client(kind, host, port, count)
        total_w = sum(weights.values())
        print(f"  {'backend':8} {'weight':>6} {'expected':>9} {'got':>5} {'share':>7}")
        worst = 0.0
        for b, w in weights.items():
            got = r["backends"].get(b, 0)
            expected, share = w / total_w, got / max(r["ok"], 1)
            worst = max(worst, abs(share - expected))
            print(f"  {b:8} {w:>6} {expected:>8.1%} {got:>5} {share:>7.1%}")
        self.check(f"{r['ok']}/{r['sent']} answered", r["failed"] == 0, "; ".join(r["errors"]))
        self.check("every backend's share within 10 points of its weight's", worst <= 0.10,
                   f"largest gap {worst:.1%}")
        return r

    def client_addresses(self):
        self.section("What the backends saw: the client's real address (direct server return)")
        wanted = {self.info["client_v4"], self.info["client_v6"]}
        ok = True
        for b in self.info["backends"].split(","):
            with open(self.info[f"{b}_log"]) as f:
                peers = [line.split()[2] for line in f if line.strip()]
            real = sum(p in wanted for p in peers)
            print(f"  {b}: {real} of {len(peers)} requests came from {' or '.join(sorted(wanted))}")
            ok = ok and peers and real == len(peers)
        self.check("every request on every backend came from the client's own address", bool(ok))

    def bypass(self, before, after, stats_before, stats_after):
        self.section("Replies bypass the balancer")
        lb_rx = after["lb"]["rx"] - before["lb"]["rx"]
        lb_tx = after["lb"]["tx"] - before["lb"]["tx"]
        c_tx = after["client"]["tx"] - before["client"]["tx"]
        c_rx = after["client"]["rx"] - before["client"]["rx"]
        tunnelled = stats_after["verdicts"]["tx"] - stats_before["verdicts"]["tx"]
        passed = stats_after["verdicts"]["pass"] - stats_before["verdicts"]["pass"]
        print(f"  client sent {c_tx} packets and received {c_rx}")
        print(f"  balancer interface {self.info['lb_if']} received {lb_rx} and sent {lb_tx};"
              f" the balancer tunnelled {tunnelled} (XDP_TX) and passed {passed} to its kernel")
        self.check("the balancer received no more than the client sent", lb_rx <= c_tx + 20,
                   f"{lb_rx} received, {c_tx} sent by the client")
        self.check("no reply crossed the balancer", passed <= 20 and c_rx > 0,
                   f"{passed} non-VIP packets (ARP/ND) against {c_rx} replies")

    def long_lived(self):
        self.section("A long-lived TCP connection across `lbctl apply`")
        state_file = os.path.join(self.info["dir"], "session.json")
        vip = self.info["vip4"]
        session = subprocess.Popen([LAB, "client", self.name, "session", vip, "7", state_file, "0.1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def state():
            try:
                with open(state_file) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return {"backend": None, "ok": 0, "failed": 0, "last_error": None, "closed": False}

        def wait_more(than, seconds=5.0):
            deadline = time.time() + seconds
            while time.time() < deadline:
                s = state()
                if s["failed"] or s["closed"] or s["ok"] >= than + 5:
                    return s
                time.sleep(0.1)
            return state()

        try:
            s = wait_more(0)
            backend = s["backend"]
            print(f"  connection to {vip}:7 (echo) is on {backend}, {s['ok']} exchanges so far")
            if backend is None:
                self.check("the long-lived connection opened", False, s["last_error"] or session.stderr.read())
                return
            others = [b for b in ("be1", "be2", "be3") if b != backend]
            grown = ",".join(f"{b}:1" for b in ("be1", "be2", "be3"))
            print(f"  $ lbctl apply   (echo backends -> {grown})")
            for line in self.lab("apply", grown).splitlines():
                print(f"    {line}")
            s2 = wait_more(s["ok"])
            self.check("it keeps working after a change that keeps its backend",
                       s2["failed"] == 0 and s2["ok"] >= s["ok"] + 5 and s2["backend"] == backend,
                       f"{s2['ok']} exchanges, {s2['failed']} failed")
            drained = ",".join(f"{b}:{0 if b == backend else 1}" for b in ("be1", "be2", "be3"))
            print(f"  $ lbctl apply   (echo backends -> {drained}: {backend} drained)")
            for line in self.lab("apply", drained).splitlines():
                print(f"    {line}")
            s3 = wait_more(s2["ok"])
            self.check(f"it keeps working after its backend {backend} is drained",
                       s3["failed"] == 0 and s3["ok"] >= s2["ok"] + 5 and s3["backend"] == backend,
                       f"{s3['ok']} exchanges, {s3['failed']} failed" + (f": {s3['last_error']}" if s3["last_error"] else ""))
            fresh = self.client("echo", vip, 7, 30)
            print(f"  30 new connections to {vip}:7 went to {json.dumps(fresh['backends'], sort_keys=True)}")
            self.check(f"new connections avoid the drained {backend}",
                       fresh["failed"] == 0 and backend not in fresh["backends"]
                       and set(fresh["backends"]) <= set(others), "; ".join(fresh["errors"]))
        finally:
            session.send_signal(signal.SIGTERM)
            try:
                session.wait(timeout=5)
            except subprocess.TimeoutExpired:
                session.kill()

    def run(self):
        self.section(f"Bringing up lab {self.name}: client, router, balancer, backends be1..be3")
        print("  " + self.lab("up").strip())
        self.info = dict(line.split("=", 1) for line in self.lab("info").splitlines() if "=" in line)
        print(f"  client {self.info['client_v4']} / {self.info['client_v6']}; balancer {self.info['lb_v4']}"
              f" on {self.info['lb_if']}; VIPs {self.info['vip4']}, {self.info['vip6']}, {self.info['vip4in6']}")

        links = lambda: {"lb": self.link_stats("lb", self.info["lb_if"]), "client": self.link_stats("client", "eth0")}
        before, stats_before = links(), self.lbctl_json("stats")
        web_weights = dict(zip(self.info["backends"].split(","), map(int, self.info["web_weights"].split(","))))
        equal = {b: 1 for b in web_weights}
        n = self.requests
        self.spread("web (TCP, IPv4-in-IPv4, weights 1:2:3)", "http", self.info["vip4"], 80, web_weights, n)
        self.spread("dns (UDP, IPv4-in-IPv4)", "udp", self.info["vip4"], 53, equal, n)
        self.spread("web6 (TCP, IPv6-in-IPv6)", "http", self.info["vip6"], 80, equal, n // 2)
        self.spread("web4in6 (TCP, IPv4 VIP, IPv6 backends: IPv4-in-IPv6)", "http", self.info["vip4in6"], 80, equal, n // 2)
        after, stats_after = links(), self.lbctl_json("stats")
        self.client_addresses()
        self.bypass(before, after, stats_before, stats_after)

        self.section("$ lbctl stats")
        print(self.lab("lbctl", "stats"), end="")
        self.long_lived()
        self.section("$ lbctl status")
        print(self.lab("lbctl", "status"), end="")

        failed = [what for what, ok, _ in self.results if not ok]
        self.section("Summary")
        print(f"  {len(self.results) - len(failed)} checks held, {len(failed)} failed")
        for what in failed:
            print(f"  FAILED: {what}")
        return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=f"demo{os.getpid()}", help="lab name (unique; default demoPID)")
    parser.add_argument("--requests", type=int, default=300, help="new flows per IPv4 VIP (default 300)")
    args = parser.parse_args()
    demo = Demo(args.name, args.requests)
    # Ctrl-C and SIGTERM end the demo through the finally below (even when started in the
    # background, where the shell has SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return demo.run()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        subprocess.run([LAB, "down", args.name], stdout=subprocess.DEVNULL)
        print(f"\nlab {args.name} torn down")


if __name__ == "__main__":
    sys.exit(main())
