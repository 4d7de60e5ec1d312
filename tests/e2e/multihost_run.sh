#!/bin/sh
# multihost_run.sh BUILD_DIR: a generation across three network-namespace
# "hosts": deploy/tern-up --hostfile starts the coordinator on h1 and one stage
# on each of h2 and h3 over TCP, after copying the model into each host's own
# directory (only where it is missing: a second start copies nothing). Every
# token of every sequence must equal tern-run's (the plain job, --no-server,
# batch mode); then tern-up's default, tern-server on h1 in front of the same
# job, answers over HTTP with tern-run's text. Not root: SKIPPED (77).
set -u
T=$(cd "$(dirname "$0")" && pwd)
D=$(cd "$T/../../deploy" && pwd)
prefix="tr$$"
. "$T/../netns-env.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TERN_NETNS_PREFIX=$prefix
/usr/bin/python3 "$T/../ref/make_model.py" --out "$work/m.gguf" --n-embd 128 --n-head 4 --n-head-kv 2 \
	--n-ff 256 --vocab 300 --layers 4 --seed 9 >/dev/null || exit 1
fail=0
: >"$work/in.jsonl"
for p in "the cat" "hello world" "once upon a time" "xyz"; do
	printf '{"prompt": "%s", "max_tokens": 8, "ignore_eos": true}\n' "$p" >>"$work/in.jsonl"
	"$B/coordinator/tern-run" -m "$work/m.gguf" -p "$p" -n 8 --temp 0 --ignore-eos --print-ids -q \
		2>"$work/run.err" >/dev/null || { echo "FAIL: tern-run"; cat "$work/run.err"; exit 1; }
	sed -n 's/^ids: //p' "$work/run.err" | tr ' ' ',' >>"$work/want"
done
# The cluster network comes from the hosts file's "# network:" line
# (netns-env.sh): tern-up keeps MPI's TCP to it.
mpi="--mca plm_rsh_agent $D/nsagent -x TERN_NETNS_PREFIX"
for round in 1 2; do
	rm -f "$work/out.jsonl"
	ip netns exec "$prefix-h1" unshare --uts sh -c "hostname h1; exec timeout 120 $D/tern-up --no-server \
		--hostfile $work/hosts --remote-dir $work/hosts.d/%h --rsh $D/nsagent --build $B \
		--mpi-args '$mpi' $work/m.gguf -- --batch $work/in.jsonl --out $work/out.jsonl" >"$work/up.log" 2>&1
	rc=$?
	cat "$work/up.log"
	grep -q -- "--mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24" "$work/up.log" ||
		{ echo "FAIL: round $round: tern-up did not keep MPI to the cluster network"; fail=1; }
	[ $rc -eq 0 ] || { echo "FAIL: round $round: tern-up exited $rc"; fail=1; }
	sed -n 's/.*"token_ids":\[\([0-9,]*\)\].*/\1/p' "$work/out.jsonl" >"$work/got"
	cmp -s "$work/want" "$work/got" || { echo "FAIL: round $round: tokens differ from tern-run"; \
		paste "$work/want" "$work/got"; fail=1; }
	grep -q "stage 1 ready on h2" "$work/up.log" || { echo "FAIL: stage 1 not on h2"; fail=1; }
	grep -q "stage 2 ready on h3" "$work/up.log" || { echo "FAIL: stage 2 not on h3"; fail=1; }
	for h in h1 h2 h3; do
		[ -f "$work/hosts.d/$h/m.gguf" ] || { echo "FAIL: no copy on $h"; fail=1; }
	done
	if [ $round -eq 1 ]; then
		[ "$(grep -c 'copying m.gguf' "$work/up.log")" -eq 3 ] || { echo "FAIL: expected 3 copies"; fail=1; }
	else
		! grep -q 'copying' "$work/up.log" || { echo "FAIL: copied again though every host had it"; fail=1; }
	fi
done
# tern-up's default across the same hosts: tern-server on h1 in front of the
# job (the coordinator on h1 behind a Unix socket), the OpenAI HTTP API
# answering with tern-run's greedy text (the built-in model: real text, where
# the random model's bytes are not UTF-8); tern-down stops all of it.
pidf="$work/srv.pid"
kjv="$D/models/tern-kjv.gguf"
TERN_UP_PIDFILE=$pidf TERN_UP_LOG="$work/srv.log" ip netns exec "$prefix-h1" unshare --uts sh -c "hostname h1; \
	exec $D/tern-up --daemon --hostfile $work/hosts --remote-dir $work/hosts.d/%h --rsh $D/nsagent --build $B \
	--mpi-args '$mpi' --http 127.0.0.1:18080 --grpc off $kjv" >"$work/srv-up.log" 2>&1
rc=$?
cat "$work/srv-up.log"
if [ $rc -ne 0 ]; then
	echo "FAIL: tern-up (tern-server) exited $rc"; cat "$work/srv.log"; fail=1
else
	grep -q "stage 2 ready on h3" "$work/srv-up.log" || { echo "FAIL: tern-server's job: stage 2 not on h3"; fail=1; }
	want=$("$B/coordinator/tern-run" -m "$kjv" -p "And God said," -n 16 --temp 0 2>/dev/null)
	got=$(ip netns exec "$prefix-h1" curl -sS http://127.0.0.1:18080/v1/completions \
		-d '{"prompt": "And God said,", "max_tokens": 16, "temperature": 0}' |
		/usr/bin/python3 -c 'import json, sys; print("And God said," + json.load(sys.stdin)["choices"][0]["text"])')
	[ "$got" = "$want" ] || { echo "FAIL: HTTP text '$got' differs from tern-run's '$want'"; fail=1; }
	srv=$(cat "$pidf")
	TERN_UP_PIDFILE=$pidf sh "$D/tern-down" || { echo "FAIL: tern-down"; fail=1; }
	! kill -0 "$srv" 2>/dev/null || { echo "FAIL: tern-server $srv still running"; fail=1; }
fi
if [ $fail -eq 0 ]; then echo "1 passed, 0 failed, 0 skipped"; else echo "0 passed, 1 failed, 0 skipped"; fi
exit $fail
