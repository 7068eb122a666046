#!/usr/bin/python3
"""Fault -> action started, medic and Monit side by side (run by bench/reaction.sh, as root,
inside a private mount namespace where /var/log is a 64 MiB tmpfs).

medic runs live on its defaults (release build, eBPF on) in a state dir of its own with four
bundled playbooks whose logic is unchanged but for the sustain windows (set to zero) and their
limits (no cooldown, a large rate limit: every trial must be able to act). Monit 5.33 runs at
`set daemon 1`, its fastest cycle, on the same faults where it can express them. Each class is
injected N times after a random phase; the time to "action started" is:

  medic: when its `executed` audit record for the trial appears in the log (seen through
         inotify; the action starts right after that record is durable);
  Monit: when its `exec` action script runs (it writes the time).

Classes: disk (/var/log passes 90 %), cpu (a new busy loop pins a core), close_wait (a
service's 250 sockets go to CLOSE_WAIT at once), retrans (a loopback drop rule on a port with
128 busy connections). Prints a table (p50/p99/min/max per tool, the ratio) and JSON.
"""

import ctypes
import json
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

MEDIC = os.environ["MEDIC"]
WORK = os.environ["WORK"]
N = int(os.environ.get("N", "30"))
CLASSES = os.environ.get("CLASSES", "disk,cpu,close_wait,retrans").split(",")
STATE = os.path.join(WORK, "state")
SOCK = os.path.join(WORK, "c.sock")
TIMEOUT = 5.0


def now():
    return time.time()


# --- watching medic's audit log -------------------------------------------------------------

class AuditWatch(threading.Thread):
    """Follows audit.log with inotify; keeps (time seen, record) of every executed action."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.seen = []
        self.lock = threading.Lock()
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(0)
        while not os.path.exists(path):
            time.sleep(0.05)
        if libc.inotify_add_watch(self.fd, path.encode(), 0x2) < 0:  # IN_MODIFY
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.f = open(path)
        self.f.seek(0, 2)
        self.buf = ""

    def run(self):
        while True:
            os.read(self.fd, 4096)
            t = now()
            self.buf += self.f.read()
            *lines, self.buf = self.buf.split("\n")
            for line in lines:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if r.get("kind") == "action" and r.get("decision") == "executed":
                    with self.lock:
                        self.seen.append((t, r))

    def first_after(self, t0, match, timeout=TIMEOUT):
        end = t0 + timeout
        while now() < end:
            with self.lock:
                for t, r in self.seen:
                    if t >= t0 and match(r):
                        return t
            time.sleep(0.005)
        return None


def stamps(name):
    p = os.path.join(WORK, f"stamps.{name}")
    try:
        with open(p) as f:
            return [float(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def monit_after(name, t0, timeout=TIMEOUT):
    end = t0 + timeout
    while now() < end:
        s = [x for x in stamps(name) if x >= t0]
        if s:
            return min(s)
        time.sleep(0.005)
    return None


def pb(rec):
    return rec.get("playbook", {}).get("name")


# --- the faults -------------------------------------------------------------------------------

def trial_disk(watch):
    fill = "/var/log/fill.bin"
    # An old rotated log for medic's cleanup to remove; the fill is not one.
    old = "/var/log/old.1.gz"
    with open(old, "wb") as f:
        f.write(b"x" * 4096)
    t = now() - 8 * 86400
    os.utime(old, (t, t))
    with open(fill, "wb") as f:  # 85 %: under both thresholds
        f.write(b"\0" * (54 << 20))
    time.sleep(1.5 + random.random())
    with open(fill, "ab") as f:  # past 90 % in one write
        f.write(b"\0" * (4 << 20))
    t0 = now()
    m = watch.first_after(t0, lambda r: pb(r) == "disk-old-logs")
    mo = monit_after("disk", t0)
    os.unlink(fill)
    time.sleep(2.2)  # both see it recover
    return t0, m, mo


def trial_cpu(watch):
    burner = os.path.join(WORK, "medic-burner")
    # A process that idles (so Monit's cpu test passes and can fail again), then spins on a
    # line from us. TERM is ignored, so medic's signal does not end it before Monit sees it.
    p = subprocess.Popen([burner, "-c", "trap '' TERM; read x; while :; do :; done"], stdin=subprocess.PIPE)
    time.sleep(2.2 + random.random())
    p.stdin.write(b"go\n")
    p.stdin.flush()
    t0 = now()
    m = watch.first_after(t0, lambda r: pb(r) == "runaway-process" and str(p.pid) in json.dumps(r["action"]))
    mo = monit_after("cpu", t0)
    p.kill()
    p.wait()
    return t0, m, mo


class LeakServer:
    """A service (its own cgroup, as systemd would make it) that never closes accepted sockets."""

    def __init__(self):
        # The name=systemd hierarchy names the unit, as systemd would (cgroup v1 here; on a
        # cgroup v2 host, /sys/fs/cgroup/system.slice/...).
        cg = os.environ.get("LEAK_CGROUP", "/sys/fs/cgroup/systemd/system.slice/medic-bench-leak.service")
        os.makedirs(cg, exist_ok=True)
        code = (
            "import socket,sys,os\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('127.0.0.1',0)); s.listen(1024)\n"
            "print(s.getsockname()[1], flush=True)\n"
            "conns=[]\n"
            "import select\n"
            "while True:\n"
            "  r,_,_=select.select([s,sys.stdin],[],[])\n"
            "  if s in r: conns.append(s.accept()[0])\n"
            "  if sys.stdin in r:\n"
            "    l=sys.stdin.readline()\n"
            "    if not l: break\n"
            "    [c.close() for c in conns]; conns=[]; print('closed', flush=True)\n"
        )
        self.p = subprocess.Popen(["/usr/bin/python3", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(self.p.pid))
        self.port = int(self.p.stdout.readline())

    def reset(self):
        self.p.stdin.write("close\n")
        self.p.stdin.flush()
        self.p.stdout.readline()

    def stop(self):
        self.p.kill()
        self.p.wait()


RETRANS_FIRST = []


def trial_close_wait(watch, server):
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(250)]
    time.sleep(1.5 + random.random())
    for c in clients:
        c.close()
    t0 = now()
    m = watch.first_after(t0, lambda r: pb(r) == "close-wait-leak")
    server.reset()
    time.sleep(2.2)
    return t0, m, None


class Chatter:
    """256 loopback connections, each sending 64 bytes every 100 ms, to a server that reads."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1024)
        self.port = self.srv.getsockname()[1]
        self.stop_ = False
        threading.Thread(target=self.serve, daemon=True).start()
        # A trickle all along, so that between storms the node's retransmit share is a number
        # (0 %), which ends the playbook's storm (its hysteresis) at its next evaluation.
        threading.Thread(target=self.trickle, daemon=True).start()

    def trickle(self):
        c = socket.create_connection(("127.0.0.1", self.port))
        c.setblocking(False)
        while not self.stop_:
            try:
                c.send(b"t")
            except OSError:
                pass
            time.sleep(0.1)

    def serve(self):
        conns = [self.srv]
        while not self.stop_:
            r, _, _ = select.select(conns, [], [], 0.2)
            for s in r:
                if s is self.srv:
                    conns.append(s.accept()[0])
                else:
                    try:
                        if not s.recv(65536):
                            conns.remove(s)
                            s.close()
                    except OSError:
                        conns.remove(s)

    def run(self, seconds):
        cs = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(256)]
        for c in cs:
            c.setblocking(False)
        end = now() + seconds
        while now() < end:
            for c in cs:
                try:
                    c.send(b"x" * 64)
                except OSError:
                    pass
            time.sleep(0.1)
        for c in cs:
            c.close()


def nft(*args):
    subprocess.run(["nft", *args], check=True)


def retrans_segs():
    with open("/proc/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


def first_retransmit(after, timeout=1.0):
    """When the node's RetransSegs first moves after `after` (polled every millisecond)."""
    base = retrans_segs()
    end = after + timeout
    while now() < end:
        if retrans_segs() > base:
            return now()
        time.sleep(0.001)
    return None


def trial_retrans(watch, chatter):
    th = threading.Thread(target=chatter.run, args=(4.0 + 1.0,))
    th.start()
    time.sleep(1.0 + random.random())
    nft("add", "rule", "inet", "medicbench", "input", "tcp", "dport", str(chatter.port), "drop")
    t0 = now()
    # The kernel retransmits no sooner than its minimum RTO (200 ms) after a segment was lost:
    # the storm exists from its first retransmit on; both figures are kept.
    t1 = first_retransmit(t0)
    m = watch.first_after(t0, lambda r: pb(r) == "tcp-retransmit-storm")
    RETRANS_FIRST.append(None if t1 is None else (t1 - t0) * 1000)
    nft("flush", "chain", "inet", "medicbench", "input")
    th.join()
    # The playbook's hysteresis ends the storm when a sample sees under 1 % (its 10 s interval).
    time.sleep(11 + random.random())
    return t0, m, None


# --- run ----------------------------------------------------------------------------------------

def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def summary(ms):
    got = [x for x in ms if x is not None]
    if not got:
        return {"n": len(ms), "missed": len(ms)}
    return {
        "n": len(ms),
        "missed": len(ms) - len(got),
        "p50": round(pct(got, 50)),
        "p99": round(pct(got, 99)),
        "min": round(min(got)),
        "max": round(max(got)),
        "mean": round(statistics.mean(got)),
    }


def main():
    watch = AuditWatch(os.path.join(STATE, "audit.log"))
    watch.start()
    results = {}
    server = LeakServer() if "close_wait" in CLASSES else None
    chatter = Chatter() if "retrans" in CLASSES else None
    if chatter:
        nft("add", "table", "inet", "medicbench")
        nft("add", "chain", "inet", "medicbench", "input", "{", "type", "filter", "hook", "input", "priority", "0", ";", "}")
    try:
        for cls in CLASSES:
            med, mon = [], []
            for i in range(N):
                if cls == "disk":
                    t0, m, mo = trial_disk(watch)
                elif cls == "cpu":
                    t0, m, mo = trial_cpu(watch)
                elif cls == "close_wait":
                    t0, m, mo = trial_close_wait(watch, server)
                else:
                    t0, m, mo = trial_retrans(watch, chatter)
                med.append(None if m is None else (m - t0) * 1000)
                mon.append(None if mo is None else (mo - t0) * 1000)
                if cls == "retrans" and med[-1] is not None and RETRANS_FIRST[-1] is not None:
                    # From the first retransmit: what medic can see at the earliest.
                    med[-1] -= RETRANS_FIRST[-1]
                print(f"{cls} {i + 1}/{N}: medic {med[-1] and round(med[-1])} ms, monit {mon[-1] and round(mon[-1])} ms", file=sys.stderr, flush=True)
            if cls == "retrans":
                results["retrans_first_ms"] = summary(RETRANS_FIRST)
            results[cls] = {"medic": summary(med), "monit": summary(mon) if cls in ("disk", "cpu") else None, "medic_ms": med, "monit_ms": mon}
    finally:
        if server:
            server.stop()
        if chatter:
            subprocess.run(["nft", "delete", "table", "inet", "medicbench"])
    names = {"disk": "/var/log (64 MiB tmpfs) passes 90 % -> cleanup starts", "cpu": "an idle process starts a busy loop -> it is signalled",
             "close_wait": "250 sockets of a service go to CLOSE_WAIT -> restart asked", "retrans": "loopback drop rule on 256 busy connections: first retransmit -> storm notice"}
    print(f"\n| fault -> action started (N = {N}) | medic p50 / p99 (min-max) | Monit p50 / p99 (min-max) | p99 ratio |")
    print("|---|---|---|---|")
    for cls, r in results.items():
        if cls not in names:
            continue
        m, mo = r["medic"], r["monit"]
        fm = f"{m.get('p50')} / {m.get('p99')} ms ({m.get('min')}-{m.get('max')}){', missed ' + str(m['missed']) if m['missed'] else ''}"
        if mo:
            fo = f"{mo.get('p50')} / {mo.get('p99')} ms ({mo.get('min')}-{mo.get('max')}){', missed ' + str(mo['missed']) if mo['missed'] else ''}"
            ratio = f"{mo['p99'] / m['p99']:.1f}x" if mo.get("p99") and m.get("p99") else "-"
        else:
            fo, ratio = "cannot express", "-"
        print(f"| {names[cls]} | {fm} | {fo} | {ratio} |")
    if "retrans_first_ms" in results:
        r = results["retrans_first_ms"]
        print(f"\n(retrans: drop rule -> first retransmit {r.get('p50')} / {r.get('p99')} ms p50 / p99: the kernel's minimum RTO)")
    with open(os.path.join(WORK, "reaction.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
