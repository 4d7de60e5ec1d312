#!/bin/sh
# run_deps.sh BUILD_DIR: tern-run, the one-process runner, loads neither MPI
# nor hwloc (the engine library is apart from the stage), while tern-node,
# the stage, does: so the check below can tell the two apart.
set -u
B=$1
command -v ldd > /dev/null 2>&1 || { echo "SKIPPED: no ldd on this system"; exit 77; }
fail=0
libs='libmpi|libhwloc|libopen-(pal|rte)'
run=$(ldd "$B/coordinator/tern-run") || { echo "FAIL: ldd tern-run"; exit 1; }
echo "$run"
if echo "$run" | grep -Eq "$libs"; then
	echo "FAIL: tern-run links MPI or hwloc:"
	echo "$run" | grep -E "$libs"
	fail=1
fi
node=$(ldd "$B/node/tern-node") || { echo "FAIL: ldd tern-node"; exit 1; }
echo "$node" | grep -q libmpi || { echo "FAIL: tern-node shows no libmpi: the check is blind"; fail=1; }
echo "$node" | grep -q libhwloc || { echo "FAIL: tern-node shows no libhwloc: the check is blind"; fail=1; }
[ $fail -eq 0 ] && echo "run_deps: OK"
exit $fail
