#!/bin/sh
# test_run_cli.sh BUILD_DIR: tern-run's command line (getopt_long): --opt=value,
# --opt value and -oVALUE give the same run; a bad number, an unknown option
# and a missing value are one error line + a --help hint, exit 2; --kv-blocks
# bounds the KV pool (same ids while it lasts, a one-line refusal after).
set -u
R="$1/coordinator/tern-run"
P="$1/partition/tern-partition"
. "$(dirname "$0")/cli-env.sh"

"$P" synth 125m --dims n_embd=128,n_head=2,n_head_kv=1,n_ff=256,n_vocab=300,bos=256,eos=257,eot=258 \
	--layers 2 --seed 3 -o "$T/m.gguf" > /dev/null || fail synth
ids() { grep '^ids:' "$1"; }
"$R" -m "$T/m.gguf" -p "the cat" -n 6 --temp 0 --seed 1 --print-ids --ignore-eos -q 2> "$T/a.txt" || fail "run: $(cat "$T/a.txt")"
"$R" --model="$T/m.gguf" --prompt="the cat" --n-predict=6 --temp=0 --seed=1 --print-ids --ignore-eos --quiet \
	2> "$T/b.txt" || fail "run with --opt=value: $(cat "$T/b.txt")"
"$R" -m"$T/m.gguf" -p "the cat" -n6 --temp 0 --seed 1 --print-ids --ignore-eos -q 2> "$T/c.txt" || fail "run -oVALUE"
[ -n "$(ids "$T/a.txt")" ] || fail "no ids: $(cat "$T/a.txt")"
[ "$(ids "$T/a.txt" | wc -w)" = 7 ] || fail "-n 6 not taken: $(ids "$T/a.txt")"
[ "$(ids "$T/a.txt")" = "$(ids "$T/b.txt")" ] || fail "--opt=value differs: $(ids "$T/a.txt") / $(ids "$T/b.txt")"
[ "$(ids "$T/a.txt")" = "$(ids "$T/c.txt")" ] || fail "-oVALUE differs"
# --n-predict=2 really is 2 (not the default)
"$R" --model="$T/m.gguf" --prompt=x --n-predict=2 --temp=0 --print-ids --ignore-eos -q 2> "$T/d.txt" || fail run
[ "$(ids "$T/d.txt" | wc -w)" = 3 ] || fail "--n-predict=2: $(ids "$T/d.txt")"

# --lm-head: f16 is the file's precision here (same ids as file); q8 asked for prints its
# agreement line; the default is q8 (same ids as asked for, no agreement line)
"$R" -m "$T/m.gguf" -p "the cat" -n 6 --temp 0 --seed 1 --print-ids --ignore-eos -q --lm-head file 2> "$T/g.txt" ||
	fail "--lm-head file: $(cat "$T/g.txt")"
"$R" -m "$T/m.gguf" -p "the cat" -n 6 --temp 0 --seed 1 --print-ids --ignore-eos -q --lm-head f16 2> "$T/f.txt" ||
	fail "--lm-head f16: $(cat "$T/f.txt")"
[ "$(ids "$T/g.txt")" = "$(ids "$T/f.txt")" ] || fail "--lm-head f16 differs from the file's head"
"$R" -m "$T/m.gguf" -p "the cat" -n 6 --temp 0 --seed 1 --print-ids --ignore-eos -q --lm-head q8 2> "$T/q.txt" ||
	fail "--lm-head q8: $(cat "$T/q.txt")"
grep -q "^tern-run: q8 LM head: top-1 agrees with the file-precision head at [0-9]* of 13 positions" "$T/q.txt" ||
	fail "--lm-head q8: no agreement line: $(cat "$T/q.txt")"
[ "$(ids "$T/a.txt")" = "$(ids "$T/q.txt")" ] || fail "the default head differs from --lm-head q8"
grep -q ", LM head q8 (" "$T/a.txt" || fail "the default head is not q8: $(cat "$T/a.txt")"
grep -q ", LM head file (" "$T/g.txt" || fail "--lm-head file not in use: $(cat "$T/g.txt")"
! grep -q "top-1 agrees" "$T/a.txt" || fail "the default head printed the agreement line: $(cat "$T/a.txt")"

bad() { # bad EXPECTED-LINE ARGS...: exit 2, that first line, then the hint only
	want="$1"
	shift
	"$R" "$@" > "$T/o.txt" 2> "$T/e.txt"
	rc=$?
	[ $rc = 2 ] || fail "$*: exit $rc: $(cat "$T/e.txt")"
	[ "$(head -n 1 "$T/e.txt")" = "$want" ] || fail "$*: got '$(head -n 1 "$T/e.txt")', want '$want'"
	[ "$(sed -n 2p "$T/e.txt")" = "tern-run: see tern-run --help" ] || fail "$*: no hint: $(cat "$T/e.txt")"
	[ "$(wc -l < "$T/e.txt")" = 2 ] || fail "$*: more than error + hint: $(cat "$T/e.txt")"
}
bad "tern-run: bad value 'abc' for --n-predict: expected an integer in [0, 4194304]" -m "$T/m.gguf" -p x --n-predict=abc
bad "tern-run: bad value '-2' for --threads: expected an integer in [1, 256]" -m "$T/m.gguf" -p x -t -2
bad "tern-run: bad value '-1' for --seed: expected an unsigned 64-bit integer" -m "$T/m.gguf" -p x --seed=-1
bad "tern-run: bad value 'nan' for --temp: expected a number in [-3.4e+38, 3.4e+38]" -m "$T/m.gguf" -p x --temp=nan
bad "tern-run: unknown option '--bogus=1'" -m "$T/m.gguf" -p x --bogus=1
bad "tern-run: unknown option '-Z'" -m "$T/m.gguf" -p x -Z
bad "tern-run: option '--ctx-size' needs a value" -m "$T/m.gguf" -p x --ctx-size
bad "tern-run: option '-n' needs a value" -m "$T/m.gguf" -p x -n
bad "tern-run: bad value 'q5' for --lm-head: expected file, f16, q8 or q4" -m "$T/m.gguf" -p x --lm-head q5
bad "tern-run: bad value '0' for --kv-blocks: expected an integer in [1, 1073741824]" -m "$T/m.gguf" -p x --kv-blocks 0

# --kv-blocks: a pool of 1 block (32 positions) runs what fits with the same ids
# as the whole-context default, and a reply that outgrows it stops with the
# engine's one-line refusal, exit 1 (never a crash or a wrong token)
"$R" -m "$T/m.gguf" -p "the cat" -n 6 --temp 0 --seed 1 --print-ids --ignore-eos -q --kv-blocks 1 2> "$T/k.txt" ||
	fail "--kv-blocks 1: $(cat "$T/k.txt")"
[ "$(ids "$T/a.txt")" = "$(ids "$T/k.txt")" ] || fail "--kv-blocks 1 differs: $(ids "$T/k.txt")"
rc=0
"$R" -m "$T/m.gguf" -p "the cat" -n 40 --temp 0 --seed 1 --ignore-eos -q --kv-blocks 1 2> "$T/k2.txt" || rc=$?
[ $rc = 1 ] || fail "--kv-blocks 1 -n 40: exit $rc: $(cat "$T/k2.txt")"
grep -q "^tern-run: engine: the step needs 1 more KV blocks of 32 positions, 0 of 1 are free$" "$T/k2.txt" ||
	fail "--kv-blocks 1 -n 40: $(cat "$T/k2.txt")"
echo "test_run_cli: OK"
