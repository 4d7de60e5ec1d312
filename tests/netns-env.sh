# netns-env.sh: the set-up the multi-host tests share, sourced (not run) by
# tests/multihost_start.sh and tests/e2e/multihost_run.sh after they set
#   D       the deploy/ directory (netns-hosts, nsagent)
#   prefix  a name prefix unique to this run, e.g. "tt$$"
# It sets B, the build directory, from the script's first argument.
# It checks what network-namespace hosts need (root, iproute2, util-linux),
# makes a work directory `work`, makes 3 namespace hosts $prefix-h1..h3
# (10.77.0.1..3) and removes both at exit. Where any of that cannot be done it
# prints "SKIPPED: <reason>" and exits 77, which ctest counts as skipped.
if [ "$(id -u)" -ne 0 ]; then
	echo "SKIPPED: the multi-host test needs root for network namespaces"
	exit 77
fi
if ! command -v ip >/dev/null || ! command -v unshare >/dev/null; then
	echo "SKIPPED: the multi-host test needs iproute2 and util-linux (deploy/setup installs them)"
	exit 77
fi
B=$(cd "$1" && pwd)
work=$(mktemp -d)
netns_cleanup() {
	sh "$D/netns-hosts" down "$prefix" 2>/dev/null
	rm -rf "$work"
}
trap netns_cleanup EXIT INT TERM
if ! sh "$D/netns-hosts" up 3 "$prefix" 2>"$work/err"; then
	echo "SKIPPED: cannot create network namespaces here: $(head -1 "$work/err")"
	exit 77
fi
printf '# network: 10.77.0.0/24\nh1 slots=1\nh2 slots=1\nh3 slots=1\n' >"$work/hosts"
