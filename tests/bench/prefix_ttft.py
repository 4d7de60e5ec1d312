# prefix_ttft.py BUILD MODEL [WORDS] [ROUNDS] [REQUESTS]: time to first token of requests
# whose long prompt (WORDS words, default 1000) starts the same, on tern-coordinator
# --stages 0 with and without the prefix cache (servers alternated per round), with the
# Stats hit counters. A benchmark script (not in ctest); figures in coordinator/README.md.
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import ternlib
build, model = sys.argv[1], sys.argv[2]
pb = ternlib.load_pb2(build)
words = "In the beginning God created the heaven and the earth . And the earth was without form , and void ; and darkness was upon the face of the deep".split()
pre = " ".join(words[i % len(words)] for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1000))
res = {}
for rnd in range(int(sys.argv[4]) if len(sys.argv) > 4 else 2):
    for name, extra in (("cache", ["-t", "2", "-c", "1200", "--slots", "1"]), ("nocache", ["-t", "2", "-c", "1200", "--slots", "1", "--no-prefix-cache"])):
        srv = ternlib.Server(build, model, 0, extra=extra)
        c = ternlib.Client(pb, srv.port)
        t = []
        for i in range(int(sys.argv[5]) if len(sys.argv) > 5 else 3):
            req = pb.GenerateRequest(prompt=pre + " Question %d: what next?" % i, max_tokens=1, ignore_eos=True)
            for m in c.generate(req, timeout=600):
                if m.done:
                    t.append((m.usage.prompt_tokens, m.usage.time_to_first_token_s))
        st = c.stats(pb.StatsRequest())
        c.close(); srv.stop()
        res.setdefault(name, []).append(t)
        print(name, "round", rnd, "ttft (prompt, s):", t, "hits", st.prefix_hits, "reused", st.prefix_tokens_reused, flush=True)
