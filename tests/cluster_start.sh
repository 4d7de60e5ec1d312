#!/bin/sh
# cluster_start.sh BUILD_DIR: an MPMD job (1 coordinator + 2 stages) on a
# synthetic 2-NUMA topology completes its start-up handshake, each stage
# pinned to its own domain; a stage-count mismatch is a clear error.
set -u
B=$1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export HWLOC_SYNTHETIC="pack:2 [numa] core:1 pu:1" HWLOC_THISSYSTEM=1
fail=0
out=$(timeout 60 mpirun --bind-to none -n 1 "$B/coordinator/tern-coordinator" --stages 2 : \
	-n 2 "$B/node/tern-node" 2>&1)
rc=$?
echo "$out"
[ $rc -eq 0 ] || { echo "FAIL: handshake exited $rc"; fail=1; }
echo "$out" | grep -q "stage 1 ready on .*numa 0 .*cpus 0 " || { echo "FAIL: stage 1 not on numa 0"; fail=1; }
echo "$out" | grep -q "stage 2 ready on .*numa 1 .*cpus 1 " || { echo "FAIL: stage 2 not on numa 1"; fail=1; }

out=$(timeout 60 mpirun --bind-to none -n 1 "$B/coordinator/tern-coordinator" --stages 3 : \
	-n 2 "$B/node/tern-node" 2>&1)
rc=$?
[ $rc -ne 0 ] || { echo "FAIL: mismatch accepted"; fail=1; }
echo "$out" | grep -q "plan has 3 stages but mpirun started 2" || { echo "FAIL: no mismatch message"; echo "$out"; fail=1; }
if [ $fail -eq 0 ]; then echo "2 passed, 0 failed, 0 skipped"; else echo "0 passed, 1 failed, 0 skipped"; fi
exit $fail
