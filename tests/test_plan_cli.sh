#!/bin/sh
# test_plan_cli.sh BUILD_DIR SOURCE_DIR: the tern-partition command line end
# to end: dry-run of a 100B plan over the example hosts file, refusal with a
# shortfall, hosts-file errors, synth -> partition -> verify, and verify
# naming a damaged and a truncated shard with a non-zero exit.
set -u
B="$1/partition/tern-partition"
SRC="$2"
. "$(dirname "$0")/cli-env.sh"

"$B" 100b --cluster "$SRC/deploy/hosts.example.yaml" --dry-run > "$T/dry.txt" 2>&1 || fail "dry run: $(cat "$T/dry.txt")"
cat "$T/dry.txt"
[ "$(grep -c '^[1-8] ' "$T/dry.txt")" = 8 ] || fail "dry run: expected 8 stage rows"
grep -q '^coord *node-a' "$T/dry.txt" || fail "dry run: coordinator row"

# 100b with an f32 KV cache (4 x 4096 positions) does not fit in 32 GiB; the
# default f16 cache is 7.25 GiB smaller, and it fits (the table says f16)
if "$B" 100b --stages 2 --mem 32GiB --kv-type f32 --dry-run > "$T/no.txt" 2>&1; then fail "100b fitted in 32 GiB"; fi
grep -q 'does not fit: short by [0-9]* bytes' "$T/no.txt" || fail "no shortfall: $(cat "$T/no.txt")"
[ "$(wc -l < "$T/no.txt")" = 1 ] || fail "refusal is not one line"
"$B" 100b --stages 2 --mem 32GiB --dry-run > "$T/f16.txt" 2>&1 || fail "100b with f16 KV: $(cat "$T/f16.txt")"
grep -q 'KV for 4 seqs x 4096 ctx (f16)' "$T/f16.txt" || fail "no f16 in the table: $(cat "$T/f16.txt")"
if "$B" 100b --stages 2 --kv-type f8 --dry-run > "$T/kvbad.txt" 2>&1; then fail "--kv-type f8 accepted"; fi
grep -q "bad value 'f8' for --kv-type: expected f32, f16 or bf16" "$T/kvbad.txt" || fail "kv-type: $(cat "$T/kvbad.txt")"

# this machine's topology through hwloc, here a synthetic two-domain one
HWLOC_SYNTHETIC="pack:2 [numa] core:1 pu:1" "$B" 2b4t --hwloc --dry-run > "$T/hw.txt" 2>&1 || fail "hwloc: $(cat "$T/hw.txt")"
[ "$(grep -c '^[1-2] ' "$T/hw.txt")" = 2 ] || fail "hwloc: expected 2 stage rows: $(cat "$T/hw.txt")"
if "$B" nosuch --stages 2 --dry-run > "$T/ns.txt" 2>&1; then fail "unknown model accepted"; fi
grep -q "nosuch: no such file" "$T/ns.txt" || fail "unknown model: $(cat "$T/ns.txt")"

printf 'hosts:\n  - name: a\n    domains:\n      - {memory: 1G}\n' > "$T/bad.yaml"
if "$B" 100b --cluster "$T/bad.yaml" --dry-run > "$T/bad.txt" 2>&1; then fail "bad hosts file accepted"; fi
grep -q "bad.yaml:4: domain without 'cores'" "$T/bad.txt" || fail "hosts error: $(cat "$T/bad.txt")"

"$B" synth 125m --dims n_embd=128,n_head=2,n_head_kv=1,n_ff=256,n_vocab=300,bos=256,eos=257,eot=258 \
	--layers 3 --seed 5 -o "$T/m.gguf" > /dev/null || fail synth
# --opt=value and --opt value mix (getopt_long)
"$B" "$T/m.gguf" --stages=3 --packing i2_s -o "$T/plan" > "$T/part.txt" 2>&1 || fail "partition: $(cat "$T/part.txt")"
[ -z "$(grep -F '[' "$T/part.txt")" ] || fail "progress bar drawn without a terminal"
"$B" verify "$T/plan" > /dev/null || fail "verify of a good plan"

[ -f "$T/plan/stage-003.shard" ] || fail "--stages=3 not taken"
# the packed LM head stored in the plan verifies; a bad format is a one-line error
"$B" "$T/m.gguf" --stages 2 --lm-head q8 --no-progress -o "$T/plan-q8" > /dev/null 2>&1 || fail "--lm-head q8"
"$B" verify "$T/plan-q8" > /dev/null || fail "verify of a q8-head plan"
"$B" "$T/m.gguf" --stages 2 --lm-head q9 -o "$T/p3" > "$T/bad.txt" 2>&1
[ $? = 2 ] && grep -q "bad value 'q9' for --lm-head: expected file, f16, q8 or q4" "$T/bad.txt" || fail "--lm-head q9: $(cat "$T/bad.txt")"

# bad command lines: one error line + a --help hint, exit 2
"$B" "$T/m.gguf" --stages=3 --zstd-level=99 -o "$T/p2" > "$T/bad.txt" 2>&1
[ $? = 2 ] || fail "--zstd-level=99: exit $?"
grep -q "^tern-partition: bad value '99' for --zstd-level: expected an integer in \[0, 19\]$" "$T/bad.txt" || fail "bad value: $(cat "$T/bad.txt")"
[ "$(wc -l < "$T/bad.txt")" = 2 ] || fail "bad value is not one line + hint: $(cat "$T/bad.txt")"
"$B" "$T/m.gguf" --mem=lots --stages 2 --dry-run > "$T/bad.txt" 2>&1
[ $? = 2 ] && grep -q "bad value 'lots' for --mem" "$T/bad.txt" || fail "--mem=lots: $(cat "$T/bad.txt")"
"$B" "$T/m.gguf" --bogus=1 > "$T/bad.txt" 2>&1
[ $? = 2 ] && grep -q "unknown option '--bogus=1'" "$T/bad.txt" || fail "--bogus: $(cat "$T/bad.txt")"
"$B" "$T/m.gguf" --dry-run --stages > "$T/bad.txt" 2>&1
[ $? = 2 ] && grep -q "option '--stages' needs a value" "$T/bad.txt" || fail "--stages: $(cat "$T/bad.txt")"
"$B" synth 125m --layers=0 -o "$T/x.gguf" > "$T/bad.txt" 2>&1
[ $? = 2 ] && grep -q "bad value '0' for --layers" "$T/bad.txt" || fail "synth --layers=0: $(cat "$T/bad.txt")"

cp "$T/plan/stage-002.shard" "$T/keep"
printf 'X' | dd of="$T/plan/stage-002.shard" bs=1 seek=3000 conv=notrunc 2>/dev/null
if "$B" verify "$T/plan" > "$T/v.txt" 2>&1; then fail "verify missed a flipped byte"; fi
grep -q 'stage-002.shard.*checksum mismatch' "$T/v.txt" || fail "verify message: $(cat "$T/v.txt")"
cp "$T/keep" "$T/plan/stage-002.shard"
truncate -s -100 "$T/plan/stage-003.shard"
if "$B" verify "$T/plan" > "$T/v.txt" 2>&1; then fail "verify missed a truncated shard"; fi
grep -q 'stage-003.shard.*truncated' "$T/v.txt" || fail "verify message: $(cat "$T/v.txt")"
echo "test_plan_cli: OK"
