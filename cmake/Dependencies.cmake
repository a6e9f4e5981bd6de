# Every third-party dependency, found once, with the reason it was chosen.
# scripts/setup.sh installs all of them from Debian's packages.

# Protobuf: the config schema and checkpoint manifests. Text format gives users a readable,
# commentable config file, and reflection resolves `--set a.b=v` overrides without a
# hand-written table of knobs.
find_package(Protobuf REQUIRED)

# MPI (Open MPI): process launch, rank discovery and the host-memory communicator.
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(Threads REQUIRED)  # the communication thread

# OpenMP: the CPU backend's loops. oneDNN (Debian's build) also runs on OpenMP, so the
# process has one thread pool.
find_package(OpenMP REQUIRED COMPONENTS CXX)

# oneDNN: CPU GEMM (fp32 and bf16-in/fp32-accumulate). It dispatches to AVX-512/AMX at run
# time; Debian's build uses the OpenMP runtime above.
find_package(dnnl REQUIRED CONFIG)

# CLI11: subcommands and flags for the one `shardtrain` executable, header-only.
find_package(CLI11 REQUIRED CONFIG)

# nlohmann/json: the safetensors header and the metrics/report JSON, header-only.
find_package(nlohmann_json REQUIRED CONFIG)

# GoogleTest: unit and multi-rank tests; Google Benchmark: bench/.
find_package(GTest REQUIRED)
find_package(benchmark QUIET CONFIG)
