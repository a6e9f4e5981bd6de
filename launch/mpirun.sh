#!/usr/bin/env bash
# mpirun.sh — launch shardtrain on one or many nodes with Open MPI.
#
#   launch/mpirun.sh NP CONFIG [train flags...]            # one node, NP ranks
#   HOSTFILE=hosts launch/mpirun.sh NP CONFIG [flags...]   # many nodes; hostfile lines:
#                                                          #   node1 slots=8
# One rank per GPU (or per CPU socket for the CPU backend). Ranks are placed by slot, so
# tensor-parallel peers (adjacent ranks) share a node. Any rank failing ends the whole job.
set -euo pipefail
np=${1:?usage: mpirun.sh NP CONFIG [train flags...]}
config=${2:?usage: mpirun.sh NP CONFIG [train flags...]}
shift 2
here="$(cd "$(dirname "$0")/.." && pwd)"
args=(-np "$np" --map-by slot --bind-to none)
[[ -n "${HOSTFILE:-}" ]] && args+=(--hostfile "$HOSTFILE")
[[ $(id -u) -eq 0 ]] && args+=(--allow-run-as-root)
exec mpirun "${args[@]}" "$here/build/bin/shardtrain" train --config "$config" "$@"
