# cli-env.sh: the set-up the command-line tests share, sourced (not run) by
# tests/test_plan_cli.sh and tests/test_run_cli.sh: T, a temporary directory
# removed at exit, and `fail MESSAGE`, which prints "FAIL: MESSAGE" and exits 1.
T=$(mktemp -d "/tmp/tern-$(basename "$0" .sh)-XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
