# env.sh — sourced by the other scripts: the build directory and the environment every
# mpirun here needs. Open MPI refuses to run as root unless told it may; CI and the dev
# machines run as root, real clusters usually do not, and the variables are harmless there.
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
SHARDTRAIN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$SHARDTRAIN_ROOT/build}"
