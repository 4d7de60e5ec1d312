#!/usr/bin/python3
"""test_grpc.py: the tern.v1.Tern service end to end, through Python's grpcio.

A real tern-coordinator (with real tern-node stages under mpirun, or the
layers in-process) serves a small synthetic model; a Python client checks:
  - Health and Tokenize answer;
  - a streamed greedy generation equals tern-run's tokens for the same prompt;
  - cancelling mid-stream frees the sequence (Stats shows no active sequence);
  - 64 concurrent streaming clients all complete, each with the tokens it gets alone;
  - with one slot and a queue limit of 8, the requests past the 8 waiting get
    RESOURCE_EXHAUSTED while the others complete;
  - malformed and hostile requests (garbage bytes, huge fields, bad values) get
    INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for oversize messages) while another
    client keeps streaming;
  - with --auth-token-file, calls without the token get UNAUTHENTICATED; the
    scheme matches in any case; repeated failures from one address are refused
    for a while; connections that never send the HTTP/2 preface are closed;
  - with --tls-cert/--tls-key, a TLS client works and a plaintext one does not.

Usage: test_grpc.py BUILD_DIR [--stages N]
Prints "N passed, N failed" and exits non-zero on any failure.
"""

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ternlib import Client, Results, Server, code_of, load_pb2, make_model, run_tern_run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--stages", type=int, default=2)
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    pb = load_pb2(build)
    work = tempfile.mkdtemp(prefix="tern-grpc-")
    model = os.path.join(work, "m.gguf")
    make_model(model)
    res = Results()
    check = res.check

    prompts = ["the cat", "hello world", "a", "once upon a time", "the the the", "xyz", "tern serves",
               "what is it"]
    srv = Server(build, model, args.stages, ["--slots", "16", "--queue", "128", "-c", "256"])
    cl = Client(pb, srv.port)
    try:
        def health():
            h = cl.health(pb.HealthRequest(), timeout=10)
            assert h.ready, h
            assert h.stages_total == max(args.stages, 1), h
            assert h.stages_up == h.stages_total, h
            assert len(h.stages) == h.stages_total
            if args.stages > 0:
                assert h.stages[-1].last_layer == 3, h
            t = cl.tokenize(pb.TokenizeRequest(text="the cat"), timeout=10)
            assert len(t.token_ids) >= 2 and len(t.pieces) == len(t.token_ids), t
            assert "".join(t.pieces).endswith("the cat"), t.pieces
        check("health_and_tokenize", health)

        alone = {}

        def same_as_tern_run():
            for p in prompts[:3]:
                want = run_tern_run(build, model, p, 12)
                ids, text, final = cl.gen(prompt=p, max_tokens=12, ignore_eos=True)
                assert ids == want, (p, ids, want)
                assert final.finish_reason == pb.FINISH_REASON_LENGTH, final
                assert final.usage.completion_tokens == 12 and final.usage.prompt_tokens > 0, final
        check("stream_equals_tern_run", same_as_tern_run)

        def tern_cli():
            # The C client: --json stream equals tern-run; errors are a status line and exit 1.
            exe = os.path.join(build, "coordinator", "tern")
            srv_addr = "127.0.0.1:%d" % srv.port
            r = subprocess.run([exe, "generate", "the cat", "-n", "12", "--ignore-eos", "--json", "--server", srv_addr],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            rows = [json.loads(line) for line in r.stdout.splitlines()]
            ids = [x["token_id"] for x in rows if not x.get("done")]
            assert ids == run_tern_run(build, model, "the cat", 12), ids
            assert rows[-1]["done"] and rows[-1]["finish_reason"] == "length", rows[-1]
            r = subprocess.run([exe, "generate", "", "--server", srv_addr], capture_output=True, text=True, timeout=60)
            assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr, (r.returncode, r.stderr)
            r = subprocess.run([exe, "health", "--json", "--server", srv_addr], capture_output=True, text=True,
                               timeout=60)
            h = json.loads(r.stdout)
            assert r.returncode == 0 and h["ready"] and h["stages_total"] == max(args.stages, 1), r.stdout
            r = subprocess.run([exe, "bogus"], capture_output=True, text=True, timeout=60)
            assert r.returncode == 2 and "unknown command" in r.stderr, r.stderr
        check("tern_cli", tern_cli)

        def concurrent_64():
            for p in prompts:
                alone[p] = cl.gen(prompt=p, max_tokens=10, ignore_eos=True)[0]
            jobs = [prompts[i % len(prompts)] for i in range(64)]
            with cf.ThreadPoolExecutor(64) as ex:
                outs = list(ex.map(lambda p: cl.gen(timeout=300, prompt=p, max_tokens=10, ignore_eos=True)[0],
                                   jobs))
            for p, ids in zip(jobs, outs):
                assert ids == alone[p], (p, ids, alone[p])
        check("concurrent_64_clients", concurrent_64)

        def cancel_frees():
            it = cl.generate(pb.GenerateRequest(prompt="the cat", max_tokens=200, ignore_eos=True), timeout=120)
            got = 0
            for m in it:
                got += 1
                if got == 3:
                    it.cancel()
                    break
            deadline = time.time() + 10
            while time.time() < deadline:
                s = cl.stats(pb.StatsRequest(), timeout=10)
                if s.active_sequences == 0 and s.queue_depth == 0:
                    break
                time.sleep(0.05)
            assert s.active_sequences == 0 and s.kv_slots_free == s.kv_slots_total, s
            assert s.requests_cancelled >= 1, s
        check("cancel_frees_sequence", cancel_frees)

        def hostile():
            # Keep one honest stream going throughout.
            ref = alone["once upon a time"]
            honest = {}
            th = threading.Thread(target=lambda: honest.update(
                ids=cl.gen(prompt="once upon a time", max_tokens=10, ignore_eos=True)[0]))
            th.start()
            bad = [
                (lambda: list(cl.generate_raw(b"\xff\xff\xff\xff\x0f garbage", timeout=10)),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt=""), grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt="x", token_ids=[1, 2]), grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(token_ids=[1, 999999]), grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt="x", sampling=pb.SamplingParams(temperature=-1)),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt="x", sampling=pb.SamplingParams(top_p=1.5)),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt="x", sampling=pb.SamplingParams(temperature=float("nan"))),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt="x", max_tokens=1000000), grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt="the " * 400, max_tokens=10), grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt="x", stop=[""]), grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: cl.gen(prompt="x" * (3 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED),
                (lambda: cl.gen(messages=[pb.ChatMessage(role="wizard", content="hi")]),
                 grpc.StatusCode.INVALID_ARGUMENT),
            ]
            for i, (fn, want) in enumerate(bad):
                code, details = code_of(fn)
                assert code == want, (i, code, details)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED or details, (i, "no reason given")
            th.join(timeout=120)
            assert honest.get("ids") == ref, honest
            assert cl.health(pb.HealthRequest(), timeout=10).ready
        check("hostile_requests", hostile)

        def chat_and_stop():
            ids, text, final = cl.gen(messages=[pb.ChatMessage(role="user", content="hi")], max_tokens=5,
                                      ignore_eos=True)
            assert len(ids) == 5 and final.done
            full_ids, full_text, _ = cl.gen(prompt="the cat", max_tokens=12, ignore_eos=True)
            if len(full_text) > 4:
                stop = full_text[2:4]
                _, t2, f2 = cl.gen(prompt="the cat", max_tokens=12, ignore_eos=True, stop=[stop])
                assert f2.finish_reason == pb.FINISH_REASON_STOP, f2
                assert stop not in t2 and full_text.startswith(t2), (t2, full_text, stop)
            # A fixed seed reproduces a sampled generation.
            sp = pb.SamplingParams(temperature=0.9, top_k=50, seed=42, has_seed=True)
            a = cl.gen(prompt="the cat", max_tokens=10, ignore_eos=True, sampling=sp)
            b = cl.gen(prompt="the cat", max_tokens=10, ignore_eos=True, sampling=sp)
            assert a[0] == b[0] and a[2].seed == 42, (a[0], b[0])
        check("chat_stop_seed", chat_and_stop)
    finally:
        cl.close()
        rc = srv.stop()
    def clean_exit():
        assert rc == 0, "job exited %s after SIGTERM to the coordinator" % rc
    check("clean_shutdown_exit_status", clean_exit)

    # Queue limit: one slot, queue of 8.
    srv = Server(build, model, args.stages, ["--slots", "1", "--queue", "8", "-c", "256"])
    cl = Client(pb, srv.port)
    try:
        def queue_limit():
            first = cl.generate(pb.GenerateRequest(prompt="a", max_tokens=200, ignore_eos=True), timeout=120)
            next(first)  # it holds the only slot now
            codes = []
            lock = threading.Lock()

            def one():
                c, _ = code_of(lambda: cl.gen(timeout=300, prompt="a", max_tokens=2, ignore_eos=True))
                with lock:
                    codes.append(c)
            ths = []
            for _ in range(8):
                ths.append(threading.Thread(target=one))
                ths[-1].start()
            deadline = time.time() + 10
            while cl.stats(pb.StatsRequest(), timeout=10).queue_depth < 8 and time.time() < deadline:
                time.sleep(0.02)
            extra = [code_of(lambda: cl.gen(prompt="a", max_tokens=2))[0] for _ in range(3)]
            first.cancel()
            for t in ths:
                t.join(timeout=120)
            assert extra == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3, extra
            assert codes == [grpc.StatusCode.OK] * 8, codes
        check("queue_limit_resource_exhausted", queue_limit)
    finally:
        cl.close()
        srv.stop()

    # Bearer token.
    tok = os.path.join(work, "token")
    with open(tok, "w") as f:
        f.write("s3cret-token\n")
    srv = Server(build, model, 0, ["--auth-token-file", tok, "-c", "256"])
    try:
        def auth():
            bare = Client(pb, srv.port)
            code, _ = code_of(lambda: bare.health(pb.HealthRequest(), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED, code
            wrong = Client(pb, srv.port, token="nope")
            code, _ = code_of(lambda: wrong.gen(prompt="a", max_tokens=2))
            assert code == grpc.StatusCode.UNAUTHENTICATED, code
            good = Client(pb, srv.port, token="s3cret-token")
            assert good.health(pb.HealthRequest(), timeout=10).ready
            assert len(good.gen(prompt="a", max_tokens=3, ignore_eos=True)[0]) == 3
            for c in (bare, wrong, good):
                c.close()
        check("bearer_token", auth)

        def scheme_any_case():
            # RFC 7235: the auth scheme is case-insensitive.
            c = Client(pb, srv.port)
            for scheme in ("bearer", "BEARER", "BeArEr"):
                md = [("authorization", scheme + " s3cret-token")]
                assert c.health(pb.HealthRequest(), timeout=10, metadata=md).ready, scheme
            c.close()
        check("bearer_scheme_any_case", scheme_any_case)

        def failures_throttled():
            # Five wrong tokens are answered as wrong; then the address is
            # refused for a while even with the right token, and after the
            # block (2 s for the first) the right token works again.
            c = Client(pb, srv.port)
            bad = [("authorization", "Bearer guess")]
            good = [("authorization", "Bearer s3cret-token")]
            for i in range(5):
                code, det = code_of(lambda: c.health(pb.HealthRequest(), timeout=10, metadata=bad))
                assert code == grpc.StatusCode.UNAUTHENTICATED and "wrong bearer token" in det, (i, code, det)
            code, det = code_of(lambda: c.health(pb.HealthRequest(), timeout=10, metadata=good))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "too many failed" in det, (code, det)
            deadline = time.time() + 30
            while time.time() < deadline:
                code, det = code_of(lambda: c.health(pb.HealthRequest(), timeout=10, metadata=good))
                if code == grpc.StatusCode.OK:
                    break
                assert "too many failed" in det, det
                time.sleep(0.5)
            assert code == grpc.StatusCode.OK, (code, det)
            c.close()
        check("bearer_failures_throttled", failures_throttled)

        def silent_connections_closed():
            # Connections that never send the HTTP/2 preface are closed by the
            # handshake timeout (TERN_GRPC_HANDSHAKE_MS, 5 s) while a real
            # client is served.
            import socket
            socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(50)]
            good = Client(pb, srv.port, token="s3cret-token")
            assert good.health(pb.HealthRequest(), timeout=10).ready
            open_ = list(socks)
            deadline = time.time() + 40
            while open_ and time.time() < deadline:
                still = []
                for s_ in open_:
                    s_.settimeout(0.05)
                    try:
                        if s_.recv(4096) != b"":
                            still.append(s_)
                    except socket.timeout:
                        still.append(s_)
                    except OSError:
                        pass
                open_ = still
            n_open = len(open_)
            for s_ in socks:
                s_.close()
            assert n_open == 0, "%d of 50 silent connections still open after 40 s" % n_open
            assert good.health(pb.HealthRequest(), timeout=10).ready
            good.close()
        check("silent_connections_closed", silent_connections_closed)
    finally:
        srv.stop()

    # TLS with a self-signed certificate.
    key, crt = os.path.join(work, "key.pem"), os.path.join(work, "crt.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    srv = Server(build, model, 0, ["--tls-cert", crt, "--tls-key", key, "-c", "256"])
    try:
        def tls():
            creds = grpc.ssl_channel_credentials(root_certificates=open(crt, "rb").read())
            c = Client(pb, srv.port, creds=creds)
            assert c.health(pb.HealthRequest(), timeout=10).ready
            assert len(c.gen(prompt="a", max_tokens=3, ignore_eos=True)[0]) == 3
            c.close()
            plain = Client(pb, srv.port)
            code, _ = code_of(lambda: plain.health(pb.HealthRequest(), timeout=5))
            assert code != grpc.StatusCode.OK, code
            plain.close()
        check("tls", tls)
    finally:
        srv.stop()

    shutil.rmtree(work, ignore_errors=True)
    return res.finish()


if __name__ == "__main__":
    sys.exit(main())
