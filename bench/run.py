#!/usr/bin/env python3
"""postern performance benchmark (driven by bench/run.sh).

Everything runs on 127.0.0.1 in a fresh temporary folder:

  target   a real OpenSSH sshd, running as the current user
  jump     a second OpenSSH sshd, used as `ssh -J` jump host (B1)
  postern  two postern instances, both proxying to the target as `web-1`
           and keeping recordings in a disk folder: target/release/postern
           (B2) and the same code built with `--features
           bench-recording-off` into target/bench-off (B3), which records
           no session bytes

Configurations:
  B0  ssh target CMD                          (direct)
  B1  ssh -J jump target CMD                  (OpenSSH jump host)
  B2  ssh -p P qa@127.0.0.1 web-1 CMD         (postern, recording to disk)
  B3  as B2, binary built without recording  (postern, recording off)

Scenarios: bulk output, bulk input, connection setup, interactive echo
latency, idle-session memory. See docs/BENCHMARKS.md.
"""

import argparse
import atexit
import datetime
import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTERN = Path(os.environ.get("BENCH_POSTERN", ROOT / "target" / "release" / "postern"))
POSTERN_OFF = Path(os.environ.get("BENCH_POSTERN_OFF",
                                  ROOT / "target" / "bench-off" / "release" / "postern"))
# For profiling only: a command prefix for `postern serve`, e.g.
# BENCH_POSTERN_WRAPPER="valgrind --tool=dhat --dhat-out-file=/tmp/dhat.out".
WRAPPER = os.environ.get("BENCH_POSTERN_WRAPPER", "").split()
ROLES = ROOT / "policies" / "roles.toml"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024
GiB = 1024 * MiB
ME = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()

CONFIGS = ["B0", "B1", "B2", "B3"]
LABELS = {
    "B0": "B0 direct",
    "B1": "B1 OpenSSH -J",
    "B2": "B2 postern (rec. disk)",
    "B3": "B3 postern (rec. off)",
}

# --------------------------------------------------------------------------
# process bookkeeping: every process we start is tracked and killed at exit


STARTED = []  # Popen objects we started
DEADLINE = None


def nearest_rank(sorted_values, q):
    """The q-quantile of an ascending list by the nearest-rank method: the
    smallest value with at least q of the values at or below it. (Integer
    ceil of q·n: in floats 0.9 * 20 is 18.000000000000004.)"""
    n = len(sorted_values)
    rank = (round(q * 1000) * n + 999) // 1000
    return sorted_values[max(rank, 1) - 1]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def descendants(pid):
    """Pids of all descendants of pid (walks /proc)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def become_subreaper():
    """PR_SET_CHILD_SUBREAPER: processes our children orphan (ssh's
    `ssh -W` child for -J, which ssh signals but never waits for; remote
    commands left by sshd) re-parent to us, so their CPU can be counted and
    cleanup finds them."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        r = s[s.rindex(")") + 2 :].split()
        return r[0], int(r[1])
    except (OSError, ValueError, IndexError):
        return None, None


def reap_orphans(limit=2.0):
    """Reap children we did not spawn (orphans re-parented to us) and
    return their CPU seconds. Waits (bounded) for orphaned ssh processes
    still on their way out; anything else is only reaped if already dead."""
    started = {p.pid for p in STARTED}
    me = os.getpid()
    total = 0.0
    end = time.monotonic() + limit
    while True:
        waiting = False
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) in started:
                continue
            state, ppid = proc_state(int(d))
            if ppid != me:
                continue
            if state == "Z":
                try:
                    pid, _st, ru = os.wait4(int(d), os.WNOHANG)
                    if pid:
                        total += ru.ru_utime + ru.ru_stime
                except ChildProcessError:
                    pass
            else:
                try:
                    if open(f"/proc/{d}/cmdline", "rb").read().startswith(b"ssh\x00"):
                        waiting = True
                except OSError:
                    pass
        if not waiting or time.monotonic() > end:
            return total
        time.sleep(0.02)


def spawn(args, **kw):
    kw.setdefault("start_new_session", True)
    p = subprocess.Popen(args, **kw)
    STARTED.append(p)
    return p


def kill_proc(p, sig=signal.SIGTERM):
    """Kill p, its process group (it leads one) and its descendants."""
    if p.poll() is not None:
        return
    pids = descendants(p.pid)
    try:
        os.killpg(p.pid, sig)
    except OSError:
        pass
    for d in pids:
        try:
            os.kill(d, sig)
        except OSError:
            pass


def cleanup():
    live = [p for p in STARTED if p.poll() is None]
    # sshd per-connection children call setsid(): collect them first, and
    # everything orphaned to us (we are a subreaper).
    extra = [d for d in descendants(os.getpid()) if d not in {p.pid for p in STARTED}]
    for p in live:
        extra += descendants(p.pid)
    for p in live:
        kill_proc(p)
    for d in extra:
        try:
            os.kill(d, signal.SIGTERM)
        except OSError:
            pass
    end = time.monotonic() + 5
    for p in live:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_proc(p, signal.SIGKILL)
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
    for d in extra:
        try:
            os.kill(d, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.1)
    reap_orphans(0)


def on_signal(signum, _frame):
    log(f"bench: signal {signum}, cleaning up")
    cleanup()
    sys.exit(128 + signum)


class Overtime(Exception):
    pass


def check_deadline(what):
    if DEADLINE and time.monotonic() > DEADLINE:
        raise Overtime(f"over the time budget (--budget) before {what}")


# --------------------------------------------------------------------------
# /proc readers


def cpu_ticks(pid, children=False):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    r = s[s.rindex(")") + 2 :].split()
    t = int(r[11]) + int(r[12])  # utime + stime
    if children:
        t += int(r[13]) + int(r[14])  # cutime + cstime (reaped children)
    return t


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def busy_percent(seconds=1.0):
    """Machine-wide CPU busy %% over `seconds` (all cores = 100)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v), idle
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def machine_task_ticks():
    """user + nice + system ticks of the whole machine (no irq/softirq,
    which /proc/PID/stat does not charge to processes either)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2]


def pss_kib(pids):
    tot = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        tot += int(line.split()[1])
        except OSError:
            pass
    return tot


# --------------------------------------------------------------------------
# setup helpers


class Source:
    """A TCP server that sends `size` bytes to every connection that first
    sends it one byte, then closes it: the destination of the -L
    port-forward scenario. (A connection that sends nothing, like the
    probe that waits for the forward to come up, gets nothing.)"""

    def __init__(self, size):
        import threading
        self.size = size
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.send, args=(c,), daemon=True).start()

    def send(self, c):
        buf = b"some log line with words 1234567890\n" * (MiB // 36)
        left = self.size
        try:
            if not c.recv(1):
                return
            while left > 0:
                n = min(left, len(buf))
                c.sendall(buf[:n])
                left -= n
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()


def bench_roles(fwd_port, bulk_file):
    """Roles for the bench's grants: a shell that may forward to the
    Source on the target host, and a read-only gate that may `cat` the
    bulk file."""
    common = ('requestable_by = ["qa"]\nlogins = ["qa"]\ntargets = ["env=prod"]\n'
              'default_ttl = "1h"\nmax_ttl = "2h"\n'
              'approvals = { required = 1, from = ["qa-lead"] }\n')
    return (f'[role.bench-shell]\n{common}mode = "shell"\n'
            f'port_forwards = ["web-1:{fwd_port}"]\n\n'
            f'[role.bench-gate]\n{common}mode = "read-only"\n'
            f'commands = ["cat {bulk_file}"]\n')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, what, limit=10):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"bench: timed out waiting for {what} on port {port}")


def keygen(path, comment):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return Path(str(path) + ".pub").read_text().strip()


def start_sshd(d, authorized, name):
    d.mkdir(parents=True)
    os.makedirs("/run/sshd", exist_ok=True)
    host_key = keygen(d / "host_key", name)
    (d / "authorized_keys").write_text("\n".join(authorized) + "\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n"
        f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin yes\nAllowTcpForwarding yes\nLogLevel INFO\n"
        # The idle-session scenario opens hundreds of connections; the
        # default MaxStartups (10:30:100) would drop some of them.
        "MaxStartups 1000:30:1000\nSubsystem sftp internal-sftp\n"
    )
    errlog = open(d / "sshd.log", "w")
    p = spawn([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
              stdout=subprocess.DEVNULL, stderr=errlog)
    wait_port(port, f"{name} sshd")
    return {"port": port, "host_key": host_key, "proc": p, "dir": d}


class Postern:
    def __init__(self, d, recordings, target, users_toml, binary=None):
        self.dir = d
        self.binary = binary or POSTERN
        subprocess.run([str(self.binary), "init", "--dir", str(d)], check=True,
                       capture_output=True)
        shutil.copy(ROLES, d / "policies" / "roles.toml")
        (d / "policies" / "inventory.toml").write_text(
            users_toml
            + f'[[target]]\nname = "web-1"\naddress = "127.0.0.1:{target["port"]}"\n'
            f'login = "{ME}"\nhost_key = "{target["host_key"]}"\n'
            'labels = { env = "prod", tier = "web" }\n'
        )
        self.port = free_port()
        cfg = (d / "postern.toml").read_text()
        cfg = cfg.replace("127.0.0.1:2222", f"127.0.0.1:{self.port}")
        if recordings is not None:
            self.recordings = Path(recordings)
            cfg = cfg.replace('recordings_dir = "recordings"',
                              f'recordings_dir = "{recordings}"')
            assert f'recordings_dir = "{recordings}"' in cfg, "recordings_dir not rewritten"
        else:
            self.recordings = d / "recordings"
        (d / "postern.toml").write_text(cfg)
        self.target_pub = (d / "hostkeys" / "target_ed25519.pub").read_text().strip()
        self.host_pub = (d / "hostkeys" / "ssh_host_ed25519_key.pub").read_text().strip()
        self.proc = None
        self.cert = None

    def serve(self):
        errlog = open(self.dir / "postern.log", "a")
        self.proc = spawn(WRAPPER + [str(self.binary), "serve", "--config", str(self.dir / "postern.toml")],
                          stdout=subprocess.DEVNULL, stderr=errlog)
        wait_port(self.port, "postern", 60 if WRAPPER else 10)

    def restart(self):
        kill_proc(self.proc)
        self.proc.wait(timeout=10)
        self.serve()

    @property
    def pid(self):
        return self.proc.pid

    def clear_recordings(self):
        for f in self.recordings.glob("*.cast"):
            try:
                f.unlink()
            except OSError:
                pass

    def recordings_bytes(self):
        return sum(f.stat().st_size for f in self.recordings.glob("*.cast"))

    def log_size(self):
        try:
            return (self.dir / "postern.log").stat().st_size
        except OSError:
            return 0

    def recording_waits(self, since, until=None):
        """Milliseconds each session that ended between bytes `since` and
        `until` of the log waited for its recording (postern logs it when
        not 0)."""
        try:
            with open(self.dir / "postern.log", "rb") as f:
                f.seek(since)
                text = f.read(-1 if until is None else max(0, until - since)).decode(errors="replace")
        except OSError:
            return []
        return [int(m) for m in re.findall(r"it waited (\d+) ms in all for the recording", text)]


# --------------------------------------------------------------------------
# the bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="postern-bench-", dir=args.tmpdir))
        self.results = {"scenarios": {}, "notes": []}
        # When set, postern configurations use the read-only gate's grant.
        self.gate = False

    # ---- setup -----------------------------------------------------------

    def setup(self):
        global POSTERN
        t = self.tmp
        log(f"bench: working in {t}")
        # Run a private copy: target/release/postern may be rebuilt while we
        # run (the restart before the idle scenario would pick that up).
        st = POSTERN.stat()
        self.binary = {
            "path": str(POSTERN),
            "built": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "sha256": hashlib.sha256(POSTERN.read_bytes()).hexdigest()[:16],
        }
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        self.git = (git, dirty)
        shutil.copy2(POSTERN, t / "postern")
        POSTERN = t / "postern"
        off = None
        if not self.args.no_off and POSTERN_OFF.exists():
            off = t / "postern-unrecorded"
            shutil.copy2(POSTERN_OFF, off)
            self.binary_off = {
                "path": str(POSTERN_OFF),
                "built": datetime.datetime.fromtimestamp(POSTERN_OFF.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "sha256": hashlib.sha256(POSTERN_OFF.read_bytes()).hexdigest()[:16],
            }
        (t / "keys").mkdir()
        (t / "certs").mkdir()
        self.client_pub = keygen(t / "keys" / "client", "bench-client")
        self.lead_pub = keygen(t / "keys" / "lead", "bench-lead")
        users = (
            f'[[user]]\nname = "alice"\ngroups = ["qa"]\nkeys = ["{self.client_pub}"]\n\n'
            f'[[user]]\nname = "bob"\ngroups = ["qa-lead"]\nkeys = ["{self.lead_pub}"]\n\n'
        )
        # postern instances are created first: the target trusts their keys.
        self.pa = Postern(t / "postern-disk", None, {"port": 0, "host_key": ""}, users)
        if off is None:
            self.pb = None
            self.results["notes"].append(
                f"B3 skipped: no {POSTERN_OFF} (bench/run.sh builds it with "
                "--features bench-recording-off --target-dir target/bench-off)")
        else:
            self.pb = Postern(t / "postern-off", None, {"port": 0, "host_key": ""}, users, binary=off)
        posterns = [p for p in (self.pa, self.pb) if p]
        self.target = start_sshd(t / "target", [self.client_pub] + [p.target_pub for p in posterns], "target")
        self.jump = start_sshd(t / "jump", [self.client_pub], "jump")
        # the 256 MiB text file on the "target" side (same machine)
        self.bulk_file = t / "bulk.txt"
        subprocess.run(
            f'yes "some log line with words 1234567890" | head -c {self.args.size_mib * MiB} > {self.bulk_file}',
            shell=True, check=True, executable="/bin/bash")
        assert self.bulk_file.stat().st_size == self.args.size_mib * MiB
        # A TCP server on the "target" host that sends size_mib MiB to each
        # connection: the destination of the -L port-forward scenario.
        self.dest = Source(self.args.size_mib * MiB)
        # now that the target exists, write its port and key into inventories
        for p in posterns:
            (p.dir / "policies" / "bench.toml").write_text(bench_roles(self.dest.port, self.bulk_file))
            inv = p.dir / "policies" / "inventory.toml"
            inv.write_text(inv.read_text()
                           .replace('address = "127.0.0.1:0"', f'address = "127.0.0.1:{self.target["port"]}"')
                           .replace('host_key = ""', f'host_key = "{self.target["host_key"]}"'))
            p.serve()
        kh = t / "known_hosts"
        lines = [f'[127.0.0.1]:{self.target["port"]} {self.target["host_key"]}',
                 f'[127.0.0.1]:{self.jump["port"]} {self.jump["host_key"]}']
        lines += [f"[127.0.0.1]:{p.port} {p.host_pub}" for p in posterns]
        kh.write_text("\n".join(lines) + "\n")
        # One client config for every configuration. It is passed with -F
        # (instead of -F /dev/null) because ssh hands only -F, not -o, on to
        # the `ssh -W` it spawns for -J: this way the jump hop uses the same
        # key, known_hosts and options as everything else.
        self.ssh_config = t / "ssh_config"
        self.ssh_config.write_text(
            "Host *\n"
            "  BatchMode yes\n"
            "  StrictHostKeyChecking yes\n"
            f"  UserKnownHostsFile {kh}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  IdentitiesOnly yes\n"
            f"  IdentityFile {t}/keys/client\n"
            "  ControlMaster no\n"
            "  ControlPath none\n"
            "  ConnectTimeout 10\n"
            "  LogLevel ERROR\n"
            "  EscapeChar none\n"
            "  ServerAliveInterval 0\n"
        )
        # The same, with the key exchange postern negotiates (russh has no
        # sntrup761x25519, OpenSSH 9.2 has no mlkem768x25519), for a
        # like-for-like connection-setup comparison.
        self.ssh_configs = {"default": self.ssh_config}
        self.ssh_configs["x25519"] = t / "ssh_config_x25519"
        self.ssh_configs["x25519"].write_text(
            self.ssh_config.read_text() + "  KexAlgorithms curve25519-sha256\n")
        # The same, with one cipher on every client leg (postern may offer
        # a different cipher than OpenSSH picks by default).
        self.ssh_configs["cipher"] = t / "ssh_config_cipher"
        self.ssh_configs["cipher"].write_text(
            self.ssh_config.read_text() + f"  Ciphers {self.args.same_cipher}\n")
        for p in posterns:
            p.cert = self.get_cert(p, "bench-shell")
            p.gate_cert = self.get_cert(p, "bench-gate")
        self.smoke()

    def ssh_base(self, variant="default"):
        return ["ssh", "-F", str(self.ssh_configs[variant])]

    def access(self, p, who, args):
        key = self.tmp / "keys" / ("client" if who == "alice" else "lead")
        cmd = self.ssh_base() + ["-i", str(key), "-o", "CertificateFile=/dev/null",
                                 "-p", str(p.port), "access@127.0.0.1"] + args
        out = subprocess.run(cmd, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise SystemExit(f"bench: access {args[0]} failed: {out.stderr.decode(errors='replace')}")
        return out.stdout

    def get_cert(self, p, role):
        out = self.access(p, "alice", ["request", role, "--for", "1h", "--reason", "bench", "--json"])
        rid = json.loads(out)["id"]
        self.access(p, "bob", ["approve", rid])
        cert = self.tmp / "certs" / f"{p.dir.name}-{role}-cert.pub"
        cert.write_bytes(self.access(p, "alice", ["cert", rid]))
        log(f"bench: {p.dir.name}: request {rid} approved, certificate saved")
        return cert

    def cmd(self, cfg, remote, tty=False, variant="default"):
        """The ssh argv for configuration cfg running the remote command."""
        base = self.ssh_base(variant) + (["-tt"] if tty else [])
        t, j = self.target, self.jump
        if cfg == "B0":
            return base + ["-p", str(t["port"]), f"{ME}@127.0.0.1", remote]
        if cfg == "B1":
            return base + ["-J", f'{ME}@127.0.0.1:{j["port"]}', "-p", str(t["port"]),
                           f"{ME}@127.0.0.1", remote]
        p = self.pa if cfg == "B2" else self.pb
        cert = p.gate_cert if self.gate else p.cert
        return base + ["-o", f"CertificateFile={cert}", "-p", str(p.port),
                       "qa@127.0.0.1", "web-1", remote]

    def configs(self):
        return [c for c in CONFIGS if c != "B3" or self.pb]

    def smoke(self):
        self.results["ciphers"] = self.negotiated("default")
        self.results["ciphers_same_cipher"] = self.negotiated("cipher")
        log(f"bench: smoke ok; negotiated {self.results['ciphers']}; "
            f"with Ciphers {self.args.same_cipher}: {self.results['ciphers_same_cipher']}")

    def negotiated(self, variant):
        ciphers = {}
        for cfg in self.configs():
            argv = self.cmd(cfg, "echo ok", variant=variant)
            out = subprocess.run(argv[:1] + ["-v"] + argv[1:],
                                 capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
            if out.returncode != 0 or out.stdout.strip() != b"ok":
                raise SystemExit(f"bench: {cfg} smoke test failed (rc {out.returncode}): "
                                 f"{out.stdout!r} {out.stderr.decode(errors='replace')[-2000:]}")
            err = out.stderr.decode(errors="replace")
            kex = re.findall(r"kex: algorithm: (\S+)", err)
            found = re.findall(r"kex: server->client cipher: (\S+) MAC: (\S+)", err)
            ciphers[cfg] = [f"{c} (kex {k})" for (c, _m), k in zip(found, kex)]
        return ciphers

    # ---- measurement helpers ----------------------------------------------

    def settle(self, cfg):
        """Wait until the connection's server side is gone and postern's
        recording writer has finished (bounded)."""
        end = time.monotonic() + 20
        while time.monotonic() < end and descendants(self.target["proc"].pid):
            time.sleep(0.05)
        if cfg == "B1":
            while time.monotonic() < end and descendants(self.jump["proc"].pid):
                time.sleep(0.05)
        if cfg in ("B2", "B3"):
            p = self.pa if cfg == "B2" else self.pb
            last = (-1, -1)
            while time.monotonic() < end:
                now = (p.recordings_bytes(), cpu_ticks(p.pid))
                if now == last:
                    break
                last = now
                time.sleep(0.3)

    def counters(self, cfg):
        c = {"target": cpu_ticks(self.target["proc"].pid, children=True)}
        if cfg == "B1":
            c["jump"] = cpu_ticks(self.jump["proc"].pid, children=True)
        if cfg in ("B2", "B3"):
            c["postern"] = cpu_ticks((self.pa if cfg == "B2" else self.pb).pid)
        return c

    def timed_run(self, cfg, remote, stdin, variant="default"):
        argv = self.cmd(cfg, remote, variant=variant)
        self.settle(cfg)
        reap_orphans(0)
        before = self.counters(cfg)
        m0 = machine_task_ticks()
        t0 = time.monotonic()
        p = spawn(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except ChildProcessError:
            raise
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        if p.returncode != 0:
            raise SystemExit(f"bench: {cfg} {remote!r} failed rc={p.returncode}: {err[-2000:]}")
        # with -J: the `ssh -W` child, orphaned to us when ssh exits
        orphans = reap_orphans()
        self.settle(cfg)
        after = self.counters(cfg)
        m1 = machine_task_ticks()
        span = time.monotonic() - t0
        cpu = {k: (after[k] - before[k]) / CLK_TCK for k in before}
        cpu["client"] = ru.ru_utime + ru.ru_stime + orphans
        ours = sum(cpu.values())
        # CPU used on the machine by processes that are not part of this
        # run (another build, say), as a share of both cores over the span.
        cpu["foreign_share"] = max(0.0, ((m1 - m0) / CLK_TCK - ours) / (span * (os.cpu_count() or 1)))
        return wall, cpu

    # ---- scenarios -------------------------------------------------------

    def bulk(self, name, remote, use_stdin, variant="default", configs=None):
        runs = self.args.runs
        size = self.args.size_mib * MiB
        configs = configs or self.configs()
        data = {c: {"wall": [], "cpu": []} for c in configs}
        # Where each B2/B3 attempt began in its postern's log, and whether
        # the attempt was kept: its session's wait line lies between that
        # offset and the next attempt's (or the end).
        marks = {c: [] for c in ("B2", "B3") if c in configs}
        for r in range(runs):
            for cfg in configs:
                check_deadline(f"{name} {cfg}")
                p = {"B2": self.pa, "B3": self.pb}.get(cfg)
                for attempt in range(self.args.retries + 1):
                    if cfg in marks:
                        marks[cfg].append([p.log_size(), False])
                    stdin = open(self.bulk_file, "rb") if use_stdin else subprocess.DEVNULL
                    try:
                        wall, cpu = self.timed_run(cfg, remote, stdin, variant)
                    finally:
                        if use_stdin:
                            stdin.close()
                    if cfg in ("B2", "B3"):
                        cpu["recording_bytes"] = p.recordings_bytes()
                        p.clear_recordings()
                    if cfg in marks:
                        marks[cfg][-1][1] = (cpu["foreign_share"] <= 0.10
                                             or attempt == self.args.retries)
                    if cpu["foreign_share"] <= 0.10:
                        break
                    log(f"bench: {name} {cfg} run {r + 1}: other processes used "
                        f"{100 * cpu['foreign_share']:.0f}% of the machine"
                        + (", retrying" if attempt < self.args.retries else ", keeping it"))
                    if attempt < self.args.retries:
                        self.background(f"{name} {cfg} retry")
                data[cfg]["wall"].append(wall)
                data[cfg]["cpu"].append(cpu)
                log(f"bench: {name} {cfg} run {r + 1}: {wall:.2f}s "
                    f"{size / MiB / wall:.0f} MiB/s cpu {cpu}")
        # A session logs its wait as it closes, just after its client exits.
        time.sleep(0.5)
        waits = {}
        for c, m in marks.items():
            p = {"B2": self.pa, "B3": self.pb}[c]
            ends = [at for at, _ in m[1:]] + [None]
            # A session that did not wait logs nothing: 0 for it.
            waits[c] = [sum(p.recording_waits(at, end)) for (at, kept), end in zip(m, ends) if kept]
        out = {}
        for cfg, d in data.items():
            wall = statistics.median(d["wall"])
            res = {
                "mib_s": size / MiB / wall,
                "mib_s_runs": [size / MiB / w for w in d["wall"]],
                "wall_s": wall,
            }
            for k in ("postern", "jump", "target", "client"):
                vals = [c[k] for c in d["cpu"] if k in c]
                if k == "client" and cfg == "B1":
                    pass  # includes the `ssh -W` child ssh spawns for -J
                if vals:
                    res[f"{k}_cpu_s_per_gib"] = statistics.median(vals) * GiB / size
            # Every process of the run: on a machine with no core to spare
            # the throughput follows this, whichever process spends it.
            chain = [sum(c.get(k, 0) for k in ("postern", "jump", "target", "client")) for c in d["cpu"]]
            res["chain_cpu_s_per_gib"] = statistics.median(chain) * GiB / size
            res["foreign_share_max"] = max(c["foreign_share"] for c in d["cpu"])
            rb = [c["recording_bytes"] for c in d["cpu"] if "recording_bytes" in c]
            if rb:
                res["recording_mib"] = statistics.median(rb) / MiB
            if waits.get(cfg):
                # One figure per kept run, in run order.
                res["recording_wait_ms"] = statistics.median(waits[cfg])
                res["recording_wait_ms_runs"] = waits[cfg]
            out[cfg] = res
        self.results["scenarios"][name] = out

    def gate_bulk(self):
        """Bulk output through the read-only gate (postern only: B0 and B1
        have no gate; compare with their rows in bulk output)."""
        self.gate = True
        try:
            self.bulk("gate", f"cat {self.bulk_file}", use_stdin=False,
                      configs=[c for c in self.configs() if c in ("B2", "B3")])
        finally:
            self.gate = False

    def forward_argv(self, cfg, lport):
        base = self.ssh_base() + ["-N", "-o", "ExitOnForwardFailure=yes"]
        t, j = self.target, self.jump
        if cfg in ("B0", "B1"):
            spec = ["-L", f"127.0.0.1:{lport}:127.0.0.1:{self.dest.port}"]
            jump = ["-J", f'{ME}@127.0.0.1:{j["port"]}'] if cfg == "B1" else []
            return base + spec + jump + ["-p", str(t["port"]), f"{ME}@127.0.0.1"]
        p = self.pa if cfg == "B2" else self.pb
        return base + ["-L", f"127.0.0.1:{lport}:web-1:{self.dest.port}",
                       "-o", f"CertificateFile={p.cert}", "-p", str(p.port), "qa@127.0.0.1"]

    def forward_once(self, cfg):
        """One -L transfer: ssh -N -L up, then time reading size bytes
        through the local port (from connect to EOF)."""
        lport = free_port()
        self.settle(cfg)
        p = spawn(self.forward_argv(cfg, lport), stdin=subprocess.DEVNULL,
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            end = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", lport), timeout=1).close()
                    break
                except OSError:
                    if p.poll() is not None or time.monotonic() > end:
                        raise SystemExit(f"bench: forward {cfg}: -L did not come up: "
                                         f"{p.stderr.read().decode(errors='replace')[-2000:]}")
                    time.sleep(0.05)
            self.settle_forward(cfg)
            before = self.counters(cfg)
            buf = bytearray(1 << 20)
            got = 0
            t0 = time.monotonic()
            with socket.create_connection(("127.0.0.1", lport), timeout=60) as c:
                c.sendall(b"G")
                while True:
                    n = c.recv_into(buf)
                    if n == 0:
                        break
                    got += n
            wall = time.monotonic() - t0
        finally:
            kill_proc(p)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # Seen once in a full run (2026-12-02, B3 run 3): the
                # transfer had finished and the ssh client outlived SIGTERM.
                log(f"bench: forward {cfg}: ssh -N still running 10 s after SIGTERM; killed")
                kill_proc(p, signal.SIGKILL)
                p.wait(timeout=10)
            p.stderr.close()
        # sshd's per-connection process is reaped (its CPU lands in the
        # listener's cutime) only once ssh is gone.
        self.settle(cfg)
        after = self.counters(cfg)
        if got != self.dest.size:
            raise SystemExit(f"bench: forward {cfg}: got {got} of {self.dest.size} bytes")
        return wall, {k: (after[k] - before[k]) / CLK_TCK for k in before}

    def settle_forward(self, cfg):
        """Wait until the probe's forward channel is done (postern's CPU
        stops moving)."""
        if cfg not in ("B2", "B3"):
            time.sleep(0.3)
            return
        pid = (self.pa if cfg == "B2" else self.pb).pid
        last, end = -1, time.monotonic() + 5
        while time.monotonic() < end:
            now = cpu_ticks(pid)
            if now == last:
                break
            last = now
            time.sleep(0.2)

    def forward(self):
        size = self.dest.size
        data = {c: [] for c in self.configs()}
        for r in range(self.args.runs):
            for cfg in self.configs():
                check_deadline(f"forward {cfg}")
                wall, cpu = self.forward_once(cfg)
                data[cfg].append((wall, cpu))
                log(f"bench: forward {cfg} run {r + 1}: {wall:.2f}s {size / MiB / wall:.0f} MiB/s cpu {cpu}")
        out = {}
        for cfg, runs in data.items():
            wall = statistics.median(w for w, _ in runs)
            res = {"mib_s": size / MiB / wall, "mib_s_runs": [size / MiB / w for w, _ in runs]}
            for k in ("postern", "jump"):
                vals = [c[k] for _, c in runs if k in c]
                if vals:
                    res[f"{k}_cpu_s_per_gib"] = statistics.median(vals) * GiB / size
            out[cfg] = res
        self.results["scenarios"]["forward"] = out

    def slow_consumer(self):
        """A slow_mib download read at slow_rate MiB/s through postern (B2):
        postern's RSS, sampled every second, should stay flat."""
        size = self.args.slow_mib * MiB
        rate = self.args.slow_rate * MiB
        f = self.tmp / "slow.txt"
        if not f.exists():
            subprocess.run(f'yes "some log line with words 1234567890" | head -c {size} > {f}',
                           shell=True, check=True, executable="/bin/bash")
        self.pa.restart()
        self.settle("B2")
        pid = self.pa.pid
        base = vm_rss_kib(pid)
        p = spawn(self.cmd("B2", f"cat {f}"), stdin=subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        fd = p.stdout.fileno()
        got = 0
        samples = []
        t0 = time.monotonic()
        next_sample = t0 + 1
        try:
            while True:
                check_deadline("slow consumer")
                b = os.read(fd, 64 * 1024)
                if not b:
                    break
                got += len(b)
                now = time.monotonic()
                ahead = got / rate - (now - t0)
                if ahead > 0:
                    time.sleep(ahead)
                if now >= next_sample:
                    samples.append((round(now - t0, 1), vm_rss_kib(pid)))
                    next_sample += 1
        finally:
            kill_proc(p)
            p.wait(timeout=10)
            p.stdout.close()
        wall = time.monotonic() - t0
        self.settle("B2")
        rss = [r for _, r in samples]
        out = {
            "mib": got / MiB,
            "seconds": wall,
            "mib_s": got / MiB / wall,
            "rss_before_kib": base,
            "rss_min_kib": min(rss) if rss else None,
            "rss_max_kib": max(rss) if rss else None,
            "rss_after_10s_kib": rss[9] if len(rss) > 9 else None,
            "rss_last_kib": rss[-1] if rss else None,
            "samples": samples,
        }
        log(f"bench: slow consumer B2: {got / MiB:.0f} MiB in {wall:.0f}s, RSS KiB before {base}, "
            f"min {out['rss_min_kib']}, max {out['rss_max_kib']}, last {out['rss_last_kib']}")
        self.pa.clear_recordings()
        self.results["scenarios"]["slow"] = out

    def first_byte(self, cfg, x25519=False):
        argv = self.cmd(cfg, "echo x", variant="x25519" if x25519 else "default")
        t0 = time.monotonic()
        p = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        r, _, _ = select.select([p.stdout], [], [], 20)
        b = os.read(p.stdout.fileno(), 1) if r else b""
        t1 = time.monotonic()
        try:
            p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            kill_proc(p, signal.SIGKILL)
            p.communicate()
        if b != b"x" or p.returncode != 0:
            raise SystemExit(f"bench: setup {cfg} failed: rc={p.returncode} first={b!r}")
        return t1 - t0

    def setup_latency(self, x25519=False):
        n = self.args.setup_runs
        data = {c: [] for c in self.configs()}
        for cfg in self.configs():  # one warm-up each, not counted
            self.first_byte(cfg, x25519)
        for i in range(n):
            check_deadline("connection setup")
            for cfg in self.configs():
                data[cfg].append(self.first_byte(cfg, x25519))
                time.sleep(0.02)
        out = {}
        for cfg, v in data.items():
            v = sorted(v)
            out[cfg] = {
                "median_ms": statistics.median(v) * 1000,
                "p90_ms": nearest_rank(v, 0.90) * 1000,
                "min_ms": v[0] * 1000,
                "max_ms": v[-1] * 1000,
                "n": len(v),
            }
            log(f"bench: setup {cfg}: {out[cfg]}")
        for c in ("B2", "B3"):
            p = self.pa if c == "B2" else self.pb
            if p:
                p.clear_recordings()
        self.results["scenarios"]["setup_x25519" if x25519 else "setup"] = out

    def echo_latency(self):
        """Keystroke round trip through a remote pty: write one byte to our
        pty master, time until the remote tty's echo comes back."""
        n = self.args.echo_keys
        out = {}
        for cfg in self.configs():
            check_deadline("echo latency")
            master, slave = os.openpty()
            # Leave the local pty in its default (cooked, echo on) mode: ssh
            # copies these modes into its pty-req, so the remote tty echoes,
            # and ssh itself switches the local side to raw mode.
            p = spawn(self.cmd(cfg, "echo READY; exec cat >/dev/null", tty=True),
                      stdin=slave, stdout=slave, stderr=slave)
            os.close(slave)
            buf = b""
            end = time.monotonic() + 20
            try:
                while b"READY" not in buf:
                    r, _, _ = select.select([master], [], [], max(0, end - time.monotonic()))
                    if not r:
                        raise SystemExit(f"bench: echo {cfg}: no READY (got {buf!r})")
                    buf += os.read(master, 4096)
                time.sleep(0.2)
                while select.select([master], [], [], 0)[0]:
                    os.read(master, 4096)
                lat = []
                for i in range(n):
                    ch = b"abcdefghijklmnopqrstuvwxyz"[i % 26 : i % 26 + 1]
                    t0 = time.monotonic()
                    os.write(master, ch)
                    got = b""
                    while ch not in got:
                        r, _, _ = select.select([master], [], [], 5)
                        if not r:
                            raise SystemExit(f"bench: echo {cfg}: keystroke {i} not echoed")
                        got += os.read(master, 4096)
                    lat.append(time.monotonic() - t0)
                    time.sleep(0.01)
                    if i % 50 == 49:  # keep the remote line short
                        os.write(master, b"\r")
                        time.sleep(0.02)
                        while select.select([master], [], [], 0.05)[0]:
                            os.read(master, 4096)
            finally:
                try:
                    os.write(master, b"\r\x04")
                    p.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    kill_proc(p, signal.SIGKILL)
                    p.wait(timeout=5)
                os.close(master)
            lat.sort()
            out[cfg] = {
                "median_ms": statistics.median(lat) * 1000,
                "p90_ms": nearest_rank(lat, 0.90) * 1000,
                "p99_ms": nearest_rank(lat, 0.99) * 1000,
                "n": len(lat),
            }
            log(f"bench: echo {cfg}: {out[cfg]}")
        for c in ("B2", "B3"):
            p = self.pa if c == "B2" else self.pb
            if p:
                self.settle(c)
                p.clear_recordings()
        self.results["scenarios"]["echo"] = out

    def open_idle(self, cfg, n, batch=12):
        """Open n idle sessions, batch at a time (postern admits at most 16
        unauthenticated connections per source). Returns the Popens."""
        procs = []
        # Long enough to outlast opening 1,000 sessions (about 2.5 min here);
        # the driver kills them when it is done.
        remote = "echo up; exec sleep 1200"
        while len(procs) < n:
            try:
                check_deadline("idle sessions")
            except Overtime:
                self.close_idle(procs)
                raise
            wave = []
            for _ in range(min(batch, n - len(procs))):
                wave.append(spawn(self.cmd(cfg, remote), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            end = time.monotonic() + 30
            pending = {w.stdout.fileno(): w for w in wave}
            # poll, not select: with 1,000 sessions the fds pass FD_SETSIZE.
            poller = select.poll()
            for fd in pending:
                poller.register(fd, select.POLLIN)
            while pending:
                r = [fd for fd, _ in poller.poll(max(0, end - time.monotonic()) * 1000)]
                if not r:
                    break
                for fd in r:
                    poller.unregister(fd)
                    b = os.read(fd, 16)
                    w = pending.pop(fd)
                    if not b.startswith(b"up"):
                        err = w.stderr.read1(4000) if w.poll() is not None else b""
                        procs += wave
                        self.close_idle(procs)
                        raise SystemExit(f"bench: idle session {len(procs)} via {cfg} failed: {b!r} {err!r}")
            if pending:
                procs += wave
                self.close_idle(procs)
                raise SystemExit(f"bench: idle sessions via {cfg}: timed out opening session {len(procs)}")
            procs += wave
        return procs

    def close_idle(self, procs):
        for p in procs:
            kill_proc(p)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_proc(p, signal.SIGKILL)
                p.wait(timeout=5)
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()

    def wait_no_children(self, pid, limit=30):
        end = time.monotonic() + limit
        while time.monotonic() < end and descendants(pid):
            time.sleep(0.1)
        return not descendants(pid)

    def target_side(self):
        """(pids, sshd connection count) under the target sshd right now."""
        pids = descendants(self.target["proc"].pid)
        conns = 0
        for d in pids:
            try:
                if open(f"/proc/{d}/cmdline", "rb").read().startswith(b"sshd"):
                    conns += 1
            except OSError:
                pass
        return pids, conns

    def kill_leftovers(self, pids):
        """Kill target-side processes from an earlier snapshot (the remote
        `sleep`s and sshd connection processes), checking each is still
        what it was, so a reused pid is never hit."""
        for d in pids:
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if cmd.startswith(b"sshd") or cmd.startswith(b"sleep\x001200"):
                try:
                    os.kill(d, signal.SIGTERM)
                except OSError:
                    pass

    def idle_memory(self):
        out = {}
        tpid = self.target["proc"].pid
        for n in self.args.sessions:
            check_deadline(f"idle sessions {n}")
            # A fresh server process for each count: the allocator keeps
            # freed buffers that new sessions would reuse, hiding their cost.
            self.pa.restart()
            subprocess.run(self.cmd("B2", "true"), stdin=subprocess.DEVNULL, timeout=30, check=True)
            pid = self.pa.pid
            self.wait_no_children(tpid)
            time.sleep(1)
            before = vm_rss_kib(pid)
            fds_before = len(os.listdir(f"/proc/{pid}/fd"))
            t0 = time.monotonic()
            procs = self.open_idle("B2", n)
            opened = time.monotonic() - t0
            time.sleep(2)
            during = vm_rss_kib(pid)
            if os.environ.get("BENCH_SMAPS"):
                with open(f"/proc/{pid}/smaps") as src, open(f"{os.environ['BENCH_SMAPS']}-{n}", "w") as dst:
                    dst.write(src.read())
            tpids, tconns = self.target_side()
            if tconns != n:
                self.results["notes"].append(
                    f"idle x{n}: only {tconns} target connections were open at the RSS reading")
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            self.close_idle(procs)
            # Does postern drop its upstream connections once the clients
            # are gone? (Direct ssh: sshd's connection ends with the client.)
            end = time.monotonic() + self.args.linger_wait
            while time.monotonic() < end and self.target_side()[1] > 0:
                time.sleep(0.2)
            lingering = self.target_side()[1]
            time.sleep(1)
            after_clients = vm_rss_kib(pid)
            fds_after_clients = len(os.listdir(f"/proc/{pid}/fd"))
            self.kill_leftovers(tpids)
            self.wait_no_children(tpid, 15)
            time.sleep(2)
            after = vm_rss_kib(pid)
            # And once the runtime's idle blocking threads (10 s keep-alive)
            # have exited.
            time.sleep(self.args.late_wait)
            after_late = vm_rss_kib(pid)
            if os.environ.get("BENCH_SMAPS"):
                with open(f"/proc/{pid}/smaps") as src, open(f"{os.environ['BENCH_SMAPS']}-{n}-after", "w") as dst:
                    dst.write(src.read())
            out[n] = {
                "rss_before_kib": before,
                "rss_open_kib": during,
                "rss_after_clients_gone_kib": after_clients,
                "rss_after_kib": after,
                "rss_after_late_kib": after_late,
                "late_wait_s": self.args.late_wait,
                "kib_per_session": (during - before) / n,
                "open_seconds": opened,
                "target_sshd_conns_while_open": tconns,
                "postern_fds_before": fds_before,
                "postern_fds_while_open": fds,
                "postern_fds_after_clients_gone": fds_after_clients,
                "postern_fds_after": len(os.listdir(f"/proc/{pid}/fd")),
                "upstream_conns_lingering_after_clients_gone": lingering,
                "linger_wait_s": self.args.linger_wait,
            }
            if n == max(self.args.sessions):
                # Memory that stays after close should be reused, not leaked:
                # the same number of sessions again, in the same process.
                rounds = []
                for _ in range(self.args.idle_rounds - 1):
                    check_deadline(f"idle sessions {n}, again")
                    procs = self.open_idle("B2", n)
                    time.sleep(2)
                    again = vm_rss_kib(pid)
                    tpids, _ = self.target_side()
                    self.close_idle(procs)
                    self.kill_leftovers(tpids)
                    self.wait_no_children(tpid, 15)
                    time.sleep(2)
                    rounds.append({"rss_open_kib": again, "rss_after_kib": vm_rss_kib(pid)})
                if rounds:
                    out[n]["later_rounds"] = rounds
            log(f"bench: idle B2 x{n}: {out[n]}")
        self.settle("B2")
        self.pa.clear_recordings()
        self.results["scenarios"]["idle"] = {str(k): v for k, v in out.items()}
        # Reference: the OpenSSH jump host's proportional memory (PSS of its
        # per-connection processes) for the same number of sessions.
        n = self.args.sessions[0]
        if not self.args.no_jump_idle:
            check_deadline("idle sessions via jump")
            jpid = self.jump["proc"].pid
            base = pss_kib([jpid] + descendants(jpid))
            procs = self.open_idle("B1", n)
            time.sleep(2)
            kids = descendants(jpid)
            during = pss_kib([jpid] + kids)
            tpids, _ = self.target_side()
            self.close_idle(procs)
            self.wait_no_children(jpid)
            self.wait_no_children(tpid, 5)
            self.kill_leftovers(tpids)
            self.results["scenarios"]["idle_jump"] = {
                "n": n,
                "pss_before_kib": base,
                "pss_open_kib": during,
                "kib_per_session": (during - base) / n,
                "jump_procs_while_open": len(kids),
            }
            log(f"bench: idle B1 jump x{n}: {self.results['scenarios']['idle_jump']}")

    # ---- run + report ----------------------------------------------------

    def background(self, before):
        """Sample machine CPU use while none of our work runs: anything
        above a few percent is someone else competing for the 2 cores.
        With --wait-idle, wait (bounded) for it to drop first."""
        b = busy_percent(1.0)
        end = time.monotonic() + self.args.wait_idle
        while b > 15 and time.monotonic() < end and not (
                DEADLINE and DEADLINE - time.monotonic() < 240):
            log(f"bench: machine {b:.0f}% busy before {before}, waiting")
            time.sleep(3)
            b = busy_percent(1.0)
        self.results.setdefault("background_busy_percent", {})[before] = round(b, 1)
        if b > 15:
            log(f"bench: WARNING: machine {b:.0f}% busy before {before} (other processes); figures will be noisy")

    def run(self):
        a = self.args
        if a.wait_idle:
            end = time.monotonic() + a.wait_idle
            while True:
                b = busy_percent(2.0)
                if b < 15:
                    break
                if time.monotonic() > end:
                    log(f"bench: machine still {b:.0f}% busy after --wait-idle {a.wait_idle}s; going on")
                    break
                log(f"bench: machine {b:.0f}% busy, waiting for it to go idle")
        self.setup()
        only = set(a.only.split(",")) if a.only else None
        cat = f"cat {self.bulk_file}"
        plan = [
            ("output", lambda: self.bulk("output", cat, use_stdin=False)),
            ("input", lambda: self.bulk("input", "cat > /dev/null", use_stdin=True)),
            ("output_cipher", lambda: self.bulk("output_cipher", cat, use_stdin=False, variant="cipher")),
            ("input_cipher", lambda: self.bulk("input_cipher", "cat > /dev/null", use_stdin=True, variant="cipher")),
            ("gate", self.gate_bulk),
            ("forward", self.forward),
            ("setup", self.setup_latency),
            ("setup_x25519", lambda: self.setup_latency(x25519=True)),
            ("echo", self.echo_latency),
            ("idle", self.idle_memory),
            ("slow", self.slow_consumer),
        ]
        for name, fn in plan:
            base = name.split("_")[0]
            if only is not None and name not in only and base not in only:
                continue
            if name.endswith("_cipher") and a.no_same_cipher:
                continue
            try:
                check_deadline(name)
                self.background(name)
                fn()
            except Overtime as e:
                self.results["notes"].append(f"{name}: skipped or cut short: {e}")
                log(f"bench: {name}: {e}")
        self.background("end")
        self.results["meta"] = self.meta()

    def meta(self):
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        v = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
        git, dirty = self.git
        kernel = os.uname().release
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(),
            "cpu": cpu,
            "kernel": kernel,
            "openssh": (v.stderr or v.stdout).strip(),
            "postern_commit": git + (" (working tree has uncommitted changes)" if dirty else ""),
            "postern_binary": getattr(self, "binary", None),
            "size_mib": a_size(self.args),
            "same_cipher": self.args.same_cipher,
            "runs": self.args.runs,
            "setup_runs": self.args.setup_runs,
            "tmp": str(self.tmp),
            "postern_unrecorded_binary": getattr(self, "binary_off", None),
            "clk_tck": CLK_TCK,
        }

    def teardown(self):
        cleanup()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def a_size(args):
    return args.size_mib


# --------------------------------------------------------------------------
# output


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)


def net_mib_s(results, scen, cfg):
    """Throughput net of connection setup: size / (median wall − median
    setup-to-first-byte of the same configuration)."""
    s = results["scenarios"]
    w = s.get(scen, {}).get(cfg, {}).get("wall_s")
    st = s.get("setup", {}).get(cfg, {}).get("median_ms")
    if w is None or st is None or w - st / 1000 <= 0:
        return None
    return results["meta"]["size_mib"] / (w - st / 1000)


def table(results):
    s = results["scenarios"]
    cfgs = [c for c in CONFIGS if any(c in s.get(k, {}) for k in ("output", "input", "gate", "forward", "setup", "echo"))]
    if not cfgs and "idle" in s:
        cfgs = ["B1", "B2"]
    rows = []

    def g(scen, cfg, key):
        return s.get(scen, {}).get(cfg, {}).get(key)

    if "output" in s:
        rows.append(("Bulk output, MiB/s (median of %d)" % results["meta"]["runs"],
                     [fmt(g("output", c, "mib_s")) for c in cfgs]))
        rows.append(("  net of setup, MiB/s (output)", [fmt(net_mib_s(results, "output", c)) for c in cfgs]))
        rows.append(("  postern CPU s/GiB (output)", [fmt(g("output", c, "postern_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  jump sshd CPU s/GiB (output)", [fmt(g("output", c, "jump_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  target sshd CPU s/GiB (output)", [fmt(g("output", c, "target_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  client ssh CPU s/GiB (output)", [fmt(g("output", c, "client_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  all of the run's processes, CPU s/GiB (output)", [fmt(g("output", c, "chain_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  max foreign CPU share in a run (output)", [fmt(100 * (g("output", c, "foreign_share_max") or 0), "{:.0f}%") for c in cfgs]))
        rows.append(("  session's wait on its recording, ms (output)", [fmt(g("output", c, "recording_wait_ms"), "{:.0f}") for c in cfgs]))
    if "input" in s:
        rows.append(("Bulk input, MiB/s (median of %d)" % results["meta"]["runs"],
                     [fmt(g("input", c, "mib_s")) for c in cfgs]))
        rows.append(("  net of setup, MiB/s (input)", [fmt(net_mib_s(results, "input", c)) for c in cfgs]))
        rows.append(("  postern CPU s/GiB (input)", [fmt(g("input", c, "postern_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  jump sshd CPU s/GiB (input)", [fmt(g("input", c, "jump_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  max foreign CPU share in a run (input)", [fmt(100 * (g("input", c, "foreign_share_max") or 0), "{:.0f}%") for c in cfgs]))
    for scen, what in (("output_cipher", "output"), ("input_cipher", "input")):
        if scen in s:
            rows.append((f"Bulk {what}, all client legs {results['meta']['same_cipher']}, MiB/s",
                         [fmt(g(scen, c, "mib_s")) for c in cfgs]))
            rows.append((f"  net of setup, MiB/s ({what}, same cipher)", [fmt(net_mib_s(results, scen, c)) for c in cfgs]))
            rows.append((f"  postern CPU s/GiB ({what}, same cipher)", [fmt(g(scen, c, "postern_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
            rows.append((f"  jump sshd CPU s/GiB ({what}, same cipher)", [fmt(g(scen, c, "jump_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
            rows.append((f"  max foreign CPU share in a run ({what}, same cipher)", [fmt(100 * (g(scen, c, "foreign_share_max") or 0), "{:.0f}%") for c in cfgs]))
    if "gate" in s:
        rows.append(("Bulk output through the read-only gate, MiB/s", [fmt(g("gate", c, "mib_s")) for c in cfgs]))
        rows.append(("  postern CPU s/GiB (gate)", [fmt(g("gate", c, "postern_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  all of the run's processes, CPU s/GiB (gate)", [fmt(g("gate", c, "chain_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  session's wait on its recording, ms (gate)", [fmt(g("gate", c, "recording_wait_ms"), "{:.0f}") for c in cfgs]))
    if "forward" in s:
        rows.append(("Port-forward -L download, MiB/s", [fmt(g("forward", c, "mib_s")) for c in cfgs]))
        rows.append(("  postern CPU s/GiB (forward)", [fmt(g("forward", c, "postern_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
        rows.append(("  jump sshd CPU s/GiB (forward)", [fmt(g("forward", c, "jump_cpu_s_per_gib"), "{:.2f}") for c in cfgs]))
    if "setup" in s:
        rows.append(("Setup to first byte, ms median", [fmt(g("setup", c, "median_ms"), "{:.1f}") for c in cfgs]))
        rows.append(("Setup to first byte, ms p90", [fmt(g("setup", c, "p90_ms"), "{:.1f}") for c in cfgs]))
    if "setup_x25519" in s:
        rows.append(("Setup, all hops curve25519-sha256, ms median", [fmt(g("setup_x25519", c, "median_ms"), "{:.1f}") for c in cfgs]))
        rows.append(("Setup, all hops curve25519-sha256, ms p90", [fmt(g("setup_x25519", c, "p90_ms"), "{:.1f}") for c in cfgs]))
    if "echo" in s:
        rows.append(("Keystroke echo, ms median", [fmt(g("echo", c, "median_ms"), "{:.2f}") for c in cfgs]))
        rows.append(("Keystroke echo, ms p90", [fmt(g("echo", c, "p90_ms"), "{:.2f}") for c in cfgs]))
        rows.append(("Keystroke echo, ms p99", [fmt(g("echo", c, "p99_ms"), "{:.2f}") for c in cfgs]))
    idle = s.get("idle", {})
    for n, v in idle.items():
        cells = ["–"] * len(cfgs)
        if "B1" in cfgs and s.get("idle_jump", {}).get("n") == int(n):
            cells[cfgs.index("B1")] = fmt(s["idle_jump"]["kib_per_session"], "{:.0f} (PSS)")
        if "B2" in cfgs:
            cells[cfgs.index("B2")] = fmt(v["kib_per_session"], "{:.1f}")
        rows.append((f"Idle sessions x{n}, KiB per session", cells))
        cells = ["–"] * len(cfgs)
        if "B2" in cfgs:
            cells[cfgs.index("B2")] = "%d / %d / %d / %d" % (
                v["rss_before_kib"], v["rss_open_kib"], v["rss_after_clients_gone_kib"], v["rss_after_kib"])
        rows.append((f"  postern RSS KiB before/open/clients killed/target side killed x{n}", cells))
        if "rss_after_late_kib" in v and "B2" in cfgs:
            cells = ["–"] * len(cfgs)
            cells[cfgs.index("B2")] = "%d" % v["rss_after_late_kib"]
            rows.append((f"  postern RSS KiB {v['late_wait_s']:.0f}s later x{n}", cells))
        cells = ["–"] * len(cfgs)
        if "B2" in cfgs:
            cells[cfgs.index("B2")] = "%d of %d" % (
                v["upstream_conns_lingering_after_clients_gone"], v["target_sshd_conns_while_open"])
        rows.append((f"  upstream conns still open {v['linger_wait_s']:.0f}s after clients killed x{n}", cells))
        later = v.get("later_rounds", [])
        if not later and "rss_second_round_open_kib" in v:  # results from before later_rounds
            later = [{"rss_open_kib": v["rss_second_round_open_kib"],
                      "rss_after_kib": v["rss_second_round_after_kib"]}]
        if later and "B2" in cfgs:
            again = later[0]
            cells = ["–"] * len(cfgs)
            cells[cfgs.index("B2")] = "%d / %d (%+.1f KiB/session)" % (
                again["rss_open_kib"], again["rss_after_kib"],
                (again["rss_open_kib"] - v["rss_after_kib"]) / int(n))
            rows.append((f"  same process, x{n} again: RSS KiB open/after", cells))
            if len(later) > 1:
                cells = ["–"] * len(cfgs)
                cells[cfgs.index("B2")] = " / ".join(str(r["rss_open_kib"]) for r in later)
                rows.append((f"  RSS KiB with x{n} open, rounds 2..{len(later) + 1}", cells))
    slow = s.get("slow")
    if slow and "B2" in cfgs:
        cells = ["–"] * len(cfgs)
        cells[cfgs.index("B2")] = "%s / %s / %s / %s" % (
            slow["rss_before_kib"], slow["rss_min_kib"], slow["rss_max_kib"], slow["rss_last_kib"])
        rows.append((f"Slow consumer {slow['mib']:.0f} MiB at {slow['mib_s']:.1f} MiB/s: postern RSS KiB before/min/max/last", cells))
    return [LABELS[c] for c in cfgs], rows


def print_table(results):
    head, rows = table(results)
    w0 = max(len(r[0]) for r in rows)
    ws = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(head)]
    print(" " * w0 + " | " + " | ".join(h.rjust(ws[i]) for i, h in enumerate(head)))
    print("-" * w0 + "-+-" + "-+-".join("-" * w for w in ws))
    for name, cells in rows:
        print(name.ljust(w0) + " | " + " | ".join(c.rjust(ws[i]) for i, c in enumerate(cells)))


def targets(results):
    s = results["scenarios"]
    out = []

    def get(scen, cfg, key):
        return s.get(scen, {}).get(cfg, {}).get(key)

    def chain_ratio(scen):
        """B3's whole-run CPU over B2's: what B2/B3 comes to when the run
        has no core to spare (docs/BENCHMARKS.md, "Reading the results")."""
        c2, c3 = get(scen, "B2", "chain_cpu_s_per_gib"), get(scen, "B3", "chain_cpu_s_per_gib")
        return f" (CPU of all the run's processes, B3/B2: {c3 / c2:.2f})" if c2 and c3 else ""

    for scen, what in (("output", "default ciphers"), ("output_cipher", "same cipher on every leg")):
        for kind, val in (("end to end", lambda c: get(scen, c, "mib_s")),
                          ("net of setup", lambda c: net_mib_s(results, scen, c))):
            b1, b2, b3 = (val(c) for c in ("B1", "B2", "B3"))
            if b1 and b2:
                r = b2 / b1
                out.append((f"Bulk output ({what}, {kind}), recording on ≥ 1.0× B1", f"{r:.2f}×", r >= 1.0))
            if b2 and b3:
                r = b2 / b3
                cpu = chain_ratio(scen) if kind == "end to end" else ""
                out.append((f"Bulk output ({what}, {kind}), recording on ≥ 0.9× recording off (B2/B3)", f"{r:.2f}×{cpu}", r >= 0.9))
    b1, g2, g3 = get("output", "B1", "mib_s"), get("gate", "B2", "mib_s"), get("gate", "B3", "mib_s")
    if b1 and g2:
        out.append(("Bulk output through the gate, recording on ≥ 1.0× B1's output", f"{g2 / b1:.2f}×", g2 >= b1))
    if g2 and g3:
        out.append(("Bulk output through the gate, recording on ≥ 0.9× recording off",
                    f"{g2 / g3:.2f}×{chain_ratio('gate')}", g2 / g3 >= 0.9))
    f1, f2 = get("forward", "B1", "mib_s"), get("forward", "B2", "mib_s")
    if f1 and f2:
        out.append(("Port-forward -L ≥ 1.0× B1", f"{f2 / f1:.2f}×", f2 >= f1))
    slow = s.get("slow")
    if slow and slow.get("rss_after_10s_kib") and slow.get("rss_max_kib"):
        grow = slow["rss_max_kib"] - slow["rss_after_10s_kib"]
        out.append((f"Slow consumer: RSS growth after the first 10 s ≤ 4 MiB (flat)", f"{grow} KiB", grow <= 4096))
    s1, s2 = get("setup", "B1", "median_ms"), get("setup", "B2", "median_ms")
    if s1 and s2:
        out.append(("Connection setup (median) ≤ B1", f"{s2:.1f} ms vs {s1:.1f} ms", s2 <= s1))
    p1, p2 = get("setup", "B1", "p90_ms"), get("setup", "B2", "p90_ms")
    if p1 and p2:
        out.append(("Connection setup (p90) ≤ B1", f"{p2:.1f} ms vs {p1:.1f} ms", p2 <= p1))
    s1, s2 = get("setup_x25519", "B1", "median_ms"), get("setup_x25519", "B2", "median_ms")
    if s1 and s2:
        out.append(("Connection setup (median), same kex on every hop, ≤ B1", f"{s2:.1f} ms vs {s1:.1f} ms", s2 <= s1))
    for q in ("median", "p99"):
        e1, e2 = get("echo", "B1", f"{q}_ms"), get("echo", "B2", f"{q}_ms")
        if e1 and e2:
            out.append((f"Keystroke echo ({q}) within 1 ms of B1",
                        f"{e2:.2f} ms vs {e1:.2f} ms ({e2 - e1:+.2f})", e2 - e1 <= 1.0))
    for n, v in s.get("idle", {}).items():
        k = v["kib_per_session"]
        out.append((f"≤ 128 KiB RSS per idle session (x{n})", f"{k:.1f} KiB", k <= 128))
    return out


def markdown(results):
    head, rows = table(results)
    lines = ["| Scenario | " + " | ".join(head) + " |",
             "|---|" + "---:|" * len(head)]
    for name, cells in rows:
        name = name.strip()
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| Target | Measured | Met? |", "|---|---|---|"]
    for name, val, ok in targets(results):
        lines.append(f"| {name} | {val} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines) + "\n"


def main():
    global DEADLINE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256, help="bulk transfer size (default 256)")
    ap.add_argument("--runs", type=int, default=3, help="bulk runs per configuration (median)")
    ap.add_argument("--setup-runs", type=int, default=20, help="connection setup runs per configuration")
    ap.add_argument("--echo-keys", type=int, default=500, help="keystrokes per configuration")
    ap.add_argument("--sessions", default="100,500,1000", help="idle session counts (comma list)")
    ap.add_argument("--slow-mib", type=int, default=1024, help="slow consumer download size (default 1024)")
    ap.add_argument("--slow-rate", type=float, default=5, help="slow consumer read rate, MiB/s (default 5)")
    ap.add_argument("--only", help="comma list of output,input,gate,forward,setup,echo,idle,slow")
    ap.add_argument("--no-off", action="store_true", help="skip B3 (the recording-off build)")
    ap.add_argument("--idle-rounds", type=int, default=2,
                    help="times the largest idle count is opened in one process (default 2)")
    ap.add_argument("--no-jump-idle", action="store_true", help="skip the jump-host idle reference")
    ap.add_argument("--markdown", help="also write the markdown table to this file")
    ap.add_argument("--json", help="also write all results as JSON to this file")
    ap.add_argument("--tmpdir", default=None, help="parent of the temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--same-cipher", default="aes256-gcm@openssh.com",
                    help="cipher forced on every client leg for the *_cipher bulk rows")
    ap.add_argument("--no-same-cipher", action="store_true", help="skip the forced-cipher bulk rows")
    ap.add_argument("--retries", type=int, default=2,
                    help="re-run a bulk run when other processes took >10%% of the machine")
    ap.add_argument("--late-wait", type=float, default=12,
                    help="seconds after the idle sessions' close to read RSS once more, "
                         "once idle blocking threads have exited (default 12)")
    ap.add_argument("--linger-wait", type=float, default=10,
                    help="seconds to wait for postern to close upstream connections of killed clients")
    ap.add_argument("--wait-idle", type=float, default=0,
                    help="wait up to this many seconds for the machine to be idle first")
    ap.add_argument("--budget", type=float, default=1500, help="seconds before giving up (default 1500)")
    args = ap.parse_args()
    args.sessions = [int(x) for x in args.sessions.split(",") if x]
    DEADLINE = time.monotonic() + args.budget
    if not POSTERN.exists():
        raise SystemExit(f"bench: {POSTERN} missing: cargo build --release")
    if not become_subreaper():
        log("bench: could not become a child subreaper: B1 client CPU misses the ssh -W child")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(cleanup)
    b = Bench(args)
    try:
        b.run()
    finally:
        b.teardown()
    r = b.results
    m = r["meta"]
    print()
    print(f"postern bench — {m['date']}, {m['nproc']} CPUs ({m['cpu']}), {m['openssh']}")
    print(f"postern: HEAD {m['postern_commit']} at the start of the run; binary {m['postern_binary']}")
    print(f"bulk {m['size_mib']} MiB; negotiated (client side): {r.get('ciphers')}")
    print(f"with Ciphers {m['same_cipher']}: {r.get('ciphers_same_cipher')}")
    print()
    print_table(r)
    print()
    for name, val, ok in targets(r):
        print(f"  [{'met' if ok else 'NOT MET'}] {name}: {val}")
    print(f"  background CPU busy % sampled before each scenario: {r.get('background_busy_percent')}")
    for n in r["notes"]:
        print(f"  note: {n}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(r))
        print(f"\nmarkdown table written to {args.markdown}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
        print(f"JSON results written to {args.json}")


if __name__ == "__main__":
    main()
