#!/usr/bin/python3
"""test_listeners.py: what a single-box job started by deploy/tern-up listens on.

MPI's TCP is unauthenticated, so on one box it must not be reachable from
the network (issue 12 item 3). Real jobs of the built-in model, each with a
coordinator and one stage, checked with `ss` by the pids of the job
(mpirun and every rank, found from mpirun's pid, never by name):
  - default (gRPC on 127.0.0.1): the ranks listen on loopback only (shared
    memory between ranks, no TCP BTL listener); mpirun's own OOB listener is
    reported, as Open MPI 4.1 binds it to every address whatever
    oob_tcp_if_include says (README: trust model);
  - --private-net (gRPC on a Unix socket): no process of the job has any TCP
    or UDP listener in this network namespace, the job's namespace has
    loopback only, and a generation through the Unix socket works.
  - tern-server launching the same job: the same, with its own HTTP and gRPC
    listeners on loopback; --private-net puts the job (not tern-server) in
    its own namespace; a hostfile without a cluster network is refused;
  - deploy/tern-up's default (tern-server in front, --daemon): the pid it
    records is tern-server's, the job runs under it, HTTP and gRPC answer on
    the loopback ports asked for, and tern-down leaves no process behind.
Not root: SKIPPED (77), counted.

Usage: test_listeners.py BUILD_DIR SOURCE_DIR
"""

import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ternlib import Results, TernServer, descendants, mpi_rank, proc_stat, thread_stats  # noqa: E402


def parent(pid):
    return int(proc_stat(pid)[1])


def listeners(pids, netns_of=None):
    """[(local address, pid)] of TCP and UDP listeners owned by pids, in this
    network namespace or (netns_of) in the one of that pid."""
    cmd = ["ss", "-ltnupH"]
    if netns_of:
        cmd = ["nsenter", "-t", str(netns_of), "-n"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    got = []
    for line in out.splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        for p in re.findall(r"pid=(\d+)", line):
            if int(p) in pids:
                got.append((f[4], int(p)))
    return got


def loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]")
    if host.startswith("::ffff:"):
        host = host[7:]  # an IPv4-mapped address
    return host.startswith("127.") or host == "::1"


def main():
    build, src = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    res = Results()
    if os.geteuid() != 0:
        print("SKIPPED: --private-net and nsenter need root")
        return 77
    work = tempfile.mkdtemp(prefix="tern-listen-")
    model = os.path.join(src, "deploy", "models", "tern-kjv.gguf")
    tern = os.path.join(build, "coordinator", "tern")

    def up(tag, up_args, listen):
        env = dict(os.environ, TERN_UP_PIDFILE=os.path.join(work, tag + ".pid"),
                   TERN_UP_LOG=os.path.join(work, tag + ".log"))
        r = subprocess.run(["sh", os.path.join(src, "deploy", "tern-up"), "--no-server", "--daemon", "--build", build,
                            "--stages", "1"] + up_args + [model, "--", "--listen", listen],
                           capture_output=True, text=True, env=env, timeout=180)
        assert r.returncode == 0, (r.stdout, r.stderr)
        coord = int(open(env["TERN_UP_PIDFILE"]).read())
        return env, coord, parent(coord)

    def down(env, mpirun):
        subprocess.run(["sh", os.path.join(src, "deploy", "tern-down")], env=env, timeout=60)
        deadline = time.time() + 30
        while os.path.exists("/proc/%d" % mpirun) and time.time() < deadline:
            time.sleep(0.1)

    def default_mode():
        env, coord, mpirun = up("tcp", [], "127.0.0.1:0")
        try:
            pids = {mpirun, *descendants(mpirun)}
            ranks = pids - {mpirun}
            assert coord in ranks and len(ranks) >= 2, (coord, ranks)
            ls = listeners(pids)
            bad = [(a, p) for a, p in ls if p in ranks and not loopback(a)]
            assert not bad, "ranks listen outside loopback: %s" % bad
            assert any(p == coord for _, p in ls), "the coordinator's gRPC listener was not seen: %s" % ls
            wide = [a for a, p in ls if p == mpirun and not loopback(a)]
            print("  mpirun's own OOB listeners (Open MPI 4.1 binds every address): %s" % wide)
        finally:
            down(env, mpirun)
    res.check("single_box_ranks_loopback_only", default_mode)

    def private_mode():
        sock = os.path.join(work, "tern.sock")
        env, coord, mpirun = up("private", ["--private-net"], "unix:" + sock)
        try:
            pids = {mpirun, *descendants(mpirun)}
            assert coord in pids and len(pids) >= 3, pids
            ls = listeners(pids)
            assert not ls, "the job listens in the host's network namespace: %s" % ls
            addrs = subprocess.run(["nsenter", "-t", str(coord), "-n", "ip", "-o", "addr"], capture_output=True,
                                   text=True, check=True).stdout
            ifaces = {ln.split()[1] for ln in addrs.splitlines() if ln.strip()}
            assert ifaces == {"lo"}, "the job's network namespace has more than loopback: %s" % addrs
            inside = listeners(pids, netns_of=coord)
            assert all(loopback(a) or a.startswith(("0.0.0.0", "*", "[::]")) for a, _ in inside), inside
            r = subprocess.run([tern, "--server", "unix:" + sock, "generate", "And God said,", "-n", "8",
                                "--temp", "0", "-q"], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and r.stdout.strip(), (r.returncode, r.stdout, r.stderr)
        finally:
            down(env, mpirun)
    res.check("private_net_no_listener_outside", private_mode)

    def refused():
        r = subprocess.run(["sh", os.path.join(src, "deploy", "tern-up"), "--no-server", "--dry-run", "--private-net",
                            model], capture_output=True, text=True)
        assert r.returncode == 2 and "Unix socket" in r.stderr and r.stderr.count("\n") == 1, r
        hosts = os.path.join(work, "hosts")
        with open(hosts, "w") as f:
            f.write("a slots=1\nb slots=1\n")
        r = subprocess.run(["sh", os.path.join(src, "deploy", "tern-up"), "--dry-run", "--hostfile", hosts, model],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "--network" in r.stderr, r
        r = subprocess.run(["sh", os.path.join(src, "deploy", "tern-up"), "--dry-run", "--hostfile", hosts,
                            "--network", "10.1.0.0/16", model], capture_output=True, text=True)
        assert r.returncode == 0 and "btl_tcp_if_include 10.1.0.0/16" in r.stdout and \
            "oob_tcp_if_include 10.1.0.0/16" in r.stdout, r
    res.check("launcher_needs_cluster_network", refused)

    # tern-server launches the same job itself: the same rules hold, and its
    # own HTTP and gRPC ports are on loopback.
    def server(tag, extra):
        return TernServer(build, ["-m", model, "--stages", "1"] + extra)

    def chat_works(port):
        import json
        import urllib.request
        req = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % port, data=json.dumps(
            {"messages": [{"role": "user", "content": "And God said"}], "max_tokens": 4}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.loads(r.read())
        assert body["usage"]["completion_tokens"] >= 1, body

    def server_default():
        srv = server("srv", [])
        try:
            pids = {srv.proc.pid, *descendants(srv.proc.pid)}
            job = pids - {srv.proc.pid}
            assert len(job) >= 3, "mpirun, the coordinator and a stage under tern-server: %s" % job
            ls = listeners(pids)
            own = [a for a, p in ls if p == srv.proc.pid]
            assert len(own) >= 2 and all(loopback(a) for a in own), "tern-server's HTTP and gRPC: %s" % own
            mpirun = [p for p in job if parent(p) == srv.proc.pid][0]
            bad = [(a, p) for a, p in ls if p in job and p != mpirun and not loopback(a)]
            assert not bad, "ranks listen outside loopback: %s" % bad
            chat_works(srv.port)
            # --nice (default 10): every thread of tern-server runs 10 nicer
            # than the job it launched, which keeps the priority we had.
            base = os.getpriority(os.PRIO_PROCESS, 0)
            own_nice = {int(st[16]) for st in thread_stats(srv.proc.pid)}
            assert own_nice == {min(19, base + 10)}, "tern-server's threads: nice %s" % own_nice
            job_nice = set()
            for p in job:
                try:
                    job_nice.add(int(proc_stat(p)[16]))
                except OSError:  # a process of the job that has ended
                    continue
            assert job_nice == {base}, "the job: nice %s, want %d" % (job_nice, base)
        finally:
            assert srv.stop() == 0
    res.check("tern_server_ranks_loopback_only", server_default)

    def server_private():
        srv = server("srvp", ["--private-net"])
        try:
            pids = {srv.proc.pid, *descendants(srv.proc.pid)}
            job = pids - {srv.proc.pid}
            ls = listeners(pids)
            assert all(p == srv.proc.pid for _, p in ls), "the job listens in the host's namespace: %s" % ls
            assert ls and all(loopback(a) for a, _ in ls), "tern-server's own listeners: %s" % ls
            coord = [p for p in job if mpi_rank(p) == 0][0]
            addrs = subprocess.run(["nsenter", "-t", str(coord), "-n", "ip", "-o", "addr"], capture_output=True,
                                   text=True, check=True).stdout
            assert {ln.split()[1] for ln in addrs.splitlines() if ln.strip()} == {"lo"}, addrs
            chat_works(srv.port)
        finally:
            assert srv.stop() == 0
    res.check("tern_server_private_net", server_private)

    def server_refuses():
        for bad in ("20", "-1", "x"):
            r = subprocess.run([os.path.join(build, "coordinator", "tern-server"), "-m", model, "--nice", bad],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 2 and "--nice" in r.stderr.splitlines()[0], r
        r = subprocess.run([os.path.join(build, "coordinator", "tern-server"), "-m", model, "--hostfile",
                            os.path.join(work, "hosts"), "--http", "127.0.0.1:0", "--grpc", "off"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "network" in r.stderr, r
        # With the network named in the hostfile the job is launched with TCP
        # kept to it (the hosts do not exist: mpirun then fails at once).
        named = os.path.join(work, "hosts-net")
        with open(named, "w") as f:
            f.write("# network: 10.1.0.0/16\nnohost-a.invalid slots=1\nnohost-b.invalid slots=1\n")
        r = subprocess.run([os.path.join(build, "coordinator", "tern-server"), "-m", model, "--hostfile", named,
                            "--http", "127.0.0.1:0", "--grpc", "off"], capture_output=True, text=True, timeout=120)
        launch = [ln for ln in r.stderr.splitlines() if ln.startswith("tern-server: mpirun ")]
        assert r.returncode != 0 and launch, r
        assert "--mca btl_tcp_if_include 10.1.0.0/16" in launch[0] and \
            "--mca oob_tcp_if_include 10.1.0.0/16" in launch[0] and launch[0].endswith("tern-node"), launch
    res.check("tern_server_needs_cluster_network", server_refuses)

    # deploy/tern-up's default: tern-server in front of the job, which
    # tern-down stops with everything under it.
    def tern_up_server():
        import socket
        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        env = dict(os.environ, TERN_UP_PIDFILE=os.path.join(work, "up-srv.pid"),
                   TERN_UP_LOG=os.path.join(work, "up-srv.log"))
        r = subprocess.run(["sh", os.path.join(src, "deploy", "tern-up"), "--daemon", "--build", build, "--stages",
                            "1", "--http", "127.0.0.1:%d" % ports[0], "--grpc", "127.0.0.1:%d" % ports[1], model,
                            "--", "--slots", "2"], capture_output=True, text=True, env=env, timeout=180)
        assert r.returncode == 0 and "tern-server pid" in r.stdout, (r.stdout, r.stderr)
        srv = int(open(env["TERN_UP_PIDFILE"]).read())
        pids = {srv, *descendants(srv)}
        try:
            assert open("/proc/%d/cmdline" % srv).read().split("\0")[0].endswith("tern-server"), srv
            job = pids - {srv}
            assert any(mpi_rank(p) == 0 for p in job) and len(job) >= 3, "mpirun and 2 ranks under it: %s" % job
            own = [a for a, p in listeners(pids) if p == srv]
            assert sorted(int(a.rsplit(":", 1)[1]) for a in own) == sorted(ports) and all(map(loopback, own)), own
            chat_works(ports[0])
            r = subprocess.run([tern, "--server", "127.0.0.1:%d" % ports[1], "generate", "And God said,", "-n", "4",
                                "--temp", "0", "-q"], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and r.stdout.strip(), (r.returncode, r.stdout, r.stderr)
        finally:
            d = subprocess.run(["sh", os.path.join(src, "deploy", "tern-down")], env=env, capture_output=True,
                               text=True, timeout=90)
        assert d.returncode == 0 and "stopped" in d.stdout, (d.stdout, d.stderr)
        left = [p for p in pids if os.path.exists("/proc/%d" % p)]
        assert not left, "left behind after tern-down: %s" % left
    res.check("tern_up_starts_tern_server", tern_up_server)
    return res.finish()


if __name__ == "__main__":
    sys.exit(main())
