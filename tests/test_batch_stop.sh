#!/bin/sh
# test_batch_stop.sh BUILD_DIR: tern-coordinator --batch stopped by SIGTERM before its
# requests finish (--drain-timeout 0.5 ends the rest) exits 0 and writes every
# request to the output, the unfinished ones with the error that says so. (Before,
# the scheduler's shutdown ended them after the batch had freed their jobs: a
# use-after-free ASan names and glibc sometimes aborted on.)
set -u
C="$1/coordinator/tern-coordinator"
M="$(dirname "$0")/../deploy/models/tern-kjv.gguf"
. "$(dirname "$0")/cli-env.sh"

i=0
while [ $i -lt 8 ]; do
	echo "{\"id\":\"r$i\",\"prompt\":\"And God said\",\"max_tokens\":4000,\"temperature\":0,\"ignore_eos\":true}"
	i=$((i + 1))
done > "$T/in.jsonl"
"$C" -m "$M" --stages 0 -c 4096 -t 1 --drain-timeout 0.5 --batch "$T/in.jsonl" --out "$T/out.jsonl" > "$T/log" 2>&1 &
pid=$!
# wait until generation runs (the model is open and the batch admitted)
n=0
while [ $n -lt 100 ] && ! grep -q "decode reads" "$T/log" 2>/dev/null; do sleep 0.1; n=$((n + 1)); done
sleep 1
kill -TERM $pid
wait $pid
rc=$?
[ $rc -eq 0 ] || fail "exit $rc after SIGTERM: $(tail -5 "$T/log")"
[ "$(wc -l < "$T/out.jsonl")" = 8 ] || fail "output has $(wc -l < "$T/out.jsonl") lines, not 8"
stopped=$(grep -c '"error":"the batch stopped before this request finished"' "$T/out.jsonl")
done_=$(grep -c '"finish_reason":"length"' "$T/out.jsonl")
[ $((stopped + done_)) = 8 ] || fail "$stopped stopped + $done_ finished of 8: $(cut -c1-200 "$T/out.jsonl")"
[ "$stopped" -ge 1 ] || fail "no request was still running at the stop (the test did not test it)"
echo "batch stopped by SIGTERM: exit 0, $stopped of 8 requests ended with the stop's error, $done_ finished"
