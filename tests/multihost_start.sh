#!/bin/sh
# multihost_start.sh BUILD_DIR: three network-namespace "hosts" on this
# machine; mpirun on h1 launches the coordinator there and one stage on each
# of h2 and h3 over TCP; every stage must report READY from its own host.
# Not root (or no `ip netns`): SKIPPED with the reason (exit 77).
set -u
T=$(cd "$(dirname "$0")" && pwd)
D=$(cd "$T/../deploy" && pwd)
prefix="tt$$"
. "$T/netns-env.sh"
# --bind-to none: every fake host has the same CPUs (PLATFORM.md pitfalls);
# yield_when_idle: ranks of three "hosts" share two cores.
out=$(TERN_NETNS_PREFIX=$prefix timeout 90 ip netns exec "$prefix-h1" unshare --uts sh -c "hostname h1; \
	exec mpirun --allow-run-as-root --hostfile $work/hosts --mca plm_rsh_agent $D/nsagent \
	-x TERN_NETNS_PREFIX \
	--mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
	--bind-to none --mca mpi_yield_when_idle 1 --map-by node \
	-n 1 $B/coordinator/tern-coordinator --stages 2 : -n 2 $B/node/tern-node" 2>&1)
rc=$?
echo "$out"
fail=0
[ $rc -eq 0 ] || { echo "FAIL: job exited $rc"; fail=1; }
echo "$out" | grep -q "stage 1 ready on h2" || { echo "FAIL: stage 1 not on h2"; fail=1; }
echo "$out" | grep -q "stage 2 ready on h3" || { echo "FAIL: stage 2 not on h3"; fail=1; }
if [ $fail -eq 0 ]; then echo "1 passed, 0 failed, 0 skipped"; else echo "0 passed, 1 failed, 0 skipped"; fi
exit $fail
