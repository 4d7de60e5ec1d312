#!/usr/bin/python3
"""test_drain.py: stopping a served cluster the way systemd does drains it.

The plain job (deploy/tern-up --no-server) in the foreground, as systemd
would run it: `systemctl stop` (KillMode=mixed) sends SIGTERM to that main
process only (deploy/tern.service runs tern-server, which passes the SIGTERM
on to the coordinator the same way). A real job
(coordinator + 1 stage, 16 KV slots), 64 streaming gRPC clients, then
SIGTERM to tern-up's pid:
  - drain_finishes_every_stream: new requests are refused with UNAVAILABLE
    and Health says not ready, while all 64 streams (16 generating, 48
    queued) run to their full length; tern-up exits 0;
  - drain_timeout_ends_the_rest: with --drain-timeout 1, streams too long
    to finish end with UNAVAILABLE after the timeout, none is cut short
    without a status, and tern-up still exits 0.

Usage: test_drain.py BUILD_DIR SOURCE_DIR
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ternlib import Client, Results, free_port, load_pb2, make_model  # noqa: E402


class Up:
    """deploy/tern-up in the foreground, as systemd's main process."""

    def __init__(self, src, build, model, coord_args):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="tern-drain-", suffix=".log", delete=False)
        env = dict(os.environ, OMPI_MCA_mpi_yield_when_idle="1")
        self.proc = subprocess.Popen(
            ["sh", os.path.join(src, "deploy", "tern-up"), "--no-server", "--build", build, "--stages", "1", model,
             "--", "--listen", "127.0.0.1:%d" % self.port] + coord_args,
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if re.search(r"serving tern\.v1\.Tern", open(self.log.name, errors="replace").read()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("tern-up did not start: " + open(self.log.name, errors="replace").read()[-2000:])

    def text(self):
        return open(self.log.name, errors="replace").read()

    def kill_all(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def main():
    build, src = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    pb = load_pb2(build)
    res = Results()
    work = tempfile.mkdtemp(prefix="tern-drain-")
    model = os.path.join(work, "m.gguf")
    make_model(model, layers=2)

    def streams(cl, n, max_tokens, got):
        """n streaming clients; got[i] counts the tokens stream i received."""
        out = [None] * n

        def one(i):
            final = None
            try:
                req = pb.GenerateRequest(prompt="stream %d" % i, max_tokens=max_tokens, ignore_eos=True)
                for m in cl.generate(req, timeout=300):
                    if m.done:
                        final = m
                    else:
                        got[i] += 1
                out[i] = ("ok", got[i], final.finish_reason if final else None)
            except grpc.RpcError as e:
                out[i] = (e.code(), e.details())
        ths = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in ths:
            t.start()
        return ths, out

    def wait_accepted(cl, n):
        deadline = time.time() + 60
        while time.time() < deadline:
            s = cl.stats(pb.StatsRequest(), timeout=10)
            if s.active_sequences + s.queue_depth >= n:
                return s
            time.sleep(0.02)
        raise AssertionError("only %d active + %d queued of %d" % (s.active_sequences, s.queue_depth, n))

    def with_up(args, body):
        """Runs body(up, client) against a fresh tern-up, which must then exit 0."""
        up = Up(src, build, model, args)
        cl = Client(pb, up.port)
        try:
            body(up, cl)
            rc = up.proc.wait(timeout=60)
            assert rc == 0, "tern-up exited %d: %s" % (rc, up.text()[-2000:])
        finally:
            cl.close()
            up.kill_all()

    def drain_all(up, cl):
        ths, out = streams(cl, 64, 1000, [0] * 64)
        s = wait_accepted(cl, 64)
        assert s.active_sequences == 16 and s.queue_depth == 48, s
        os.kill(up.proc.pid, signal.SIGTERM)  # what systemctl stop does
        # tern-up passes it to the coordinator, which then says not ready
        # (a request sent before that is accepted like any other).
        deadline = time.time() + 30
        while cl.health(pb.HealthRequest(), timeout=10).ready and time.time() < deadline:
            time.sleep(0.02)
        code, details = None, ""
        try:
            cl.gen(timeout=30, prompt="late", max_tokens=2)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        assert code == grpc.StatusCode.UNAVAILABLE and "not taking new requests" in details, (code, details)
        for t in ths:
            t.join(timeout=300)
        bad = [o for o in out if o != ("ok", 1000, pb.FINISH_REASON_LENGTH)]
        assert not bad, "%d of 64 streams did not finish: %s" % (len(bad), bad[:4])
    res.check("drain_finishes_every_stream",
              lambda: with_up(["--slots", "16", "--queue", "64", "-c", "1100", "--drain-timeout", "120"], drain_all))

    def drain_timeout(up, cl):
        got = [0] * 4
        ths, out = streams(cl, 4, 4000, got)
        wait_accepted(cl, 4)
        deadline = time.time() + 60
        while min(got) == 0 and time.time() < deadline and not any(out):
            time.sleep(0.01)
        assert min(got) > 0, ("streams did not start", got, out)
        os.kill(up.proc.pid, signal.SIGTERM)
        at_signal = sum(got)
        for t in ths:
            t.join(timeout=120)
        assert all(o and o[0] == grpc.StatusCode.UNAVAILABLE for o in out), out
        # They went on generating during the drain, then were ended.
        assert sum(got) > at_signal, (at_signal, got)
    res.check("drain_timeout_ends_the_rest",
              lambda: with_up(["--slots", "4", "-c", "4096", "--drain-timeout", "1"], drain_timeout))
    return res.finish()


if __name__ == "__main__":
    sys.exit(main())
