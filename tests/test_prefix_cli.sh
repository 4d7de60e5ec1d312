#!/bin/sh
# test_prefix_cli.sh BUILD_DIR: the prefix cache through tern-coordinator --stages 0
# --batch on the built-in model: 17 greedy requests sharing an 84-token prompt's first
# two 32-position blocks (one more scores its prompt, which never attaches) give the
# same output file with the cache, with --no-prefix-cache and with a pool so small
# (--kv-blocks 16: the 4 slots reserve every block); the log counts the hits.
set -u
C="$1/coordinator/tern-coordinator"
M="$(dirname "$0")/../deploy/models/tern-kjv.gguf"
. "$(dirname "$0")/cli-env.sh"

pre="In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep."
i=0
while [ $i -lt 17 ]; do
	echo "{\"id\":\"r$i\",\"prompt\":\"$pre $pre Question $i: what came next on day $i?\",\"max_tokens\":12,\"ignore_eos\":true}"
	i=$((i + 1))
done > "$T/in.jsonl"
echo "{\"id\":\"score\",\"prompt\":\"$pre $pre\",\"max_tokens\":0,\"score\":true}" >> "$T/in.jsonl"

run() { # NAME ARGS...: one batch run, its log in $T/NAME.log
	name=$1
	shift
	"$C" -m "$M" --stages 0 --slots 4 -t 1 "$@" --batch "$T/in.jsonl" --out "$T/$name.jsonl" > "$T/$name.log" 2>&1 ||
		fail "$name: $(tail -3 "$T/$name.log")"
}
run on
run off --no-prefix-cache
run small --kv-blocks 16

[ "$(grep -c '"finish_reason":"length"' "$T/on.jsonl")" = 18 ] || fail "not every request finished: $(cat "$T/on.jsonl")"
grep -q '"prompt_nll":' "$T/on.jsonl" || fail "the scoring request has no prompt_nll"
cmp -s "$T/on.jsonl" "$T/off.jsonl" || fail "output with the prefix cache differs from --no-prefix-cache"
cmp -s "$T/small.jsonl" "$T/off.jsonl" || fail "output with --kv-blocks 16 differs from --no-prefix-cache"
! grep -q "prefix cache:" "$T/off.jsonl" "$T/off.log" || fail "--no-prefix-cache still counts hits: $(cat "$T/off.log")"
for name in on small; do
	line=$(grep "prefix cache: " "$T/$name.log") || fail "$name: no prefix cache line: $(cat "$T/$name.log")"
	hits=$(echo "$line" | sed 's/.*prefix cache: \([0-9]*\) sequences.*/\1/')
	pos=$(echo "$line" | sed 's/.*blocks, \([0-9]*\) prompt positions.*/\1/')
	# 4 slots: the first 4 prefill together (misses), at least 12 later ones attach 64
	[ "$hits" -ge 12 ] && [ "$hits" -le 17 ] || fail "$name: $hits hits: $line"
	[ "$pos" = $((hits * 64)) ] || fail "$name: $pos positions reused for $hits hits: $line"
done
echo "prefix cache: $(grep 'prefix cache: ' "$T/on.log" | sed 's/.*prefix cache: //'); output equal without, and in a bounded pool"
