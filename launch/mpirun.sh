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
# Many nodes: the daemons' connections probe an idle peer after 10 s, every 5 s, 3 times, so
# that a node gone silent is noticed in ~25 s instead of never (README "Running on a cluster");
# shardtrain's own watchdog (parallel.comm_timeout_s) covers the ranks' traffic.
[[ -n "${HOSTFILE:-}" ]] && args+=(--hostfile "$HOSTFILE" --mca oob_tcp_keepalive_time 10
                                   --mca oob_tcp_keepalive_intvl 5 --mca oob_tcp_keepalive_probes 3)
[[ $(id -u) -eq 0 ]] && args+=(--allow-run-as-root)
exec mpirun "${args[@]}" "$here/build/bin/shardtrain" train --config "$config" "$@"
