# env.sh — sourced by every wrapper in gpu-bundle/bin: the bundle's libraries first, then the
# CUDA libraries of this machine, and Open MPI / PMIx relocated into the bundle.
#
# The CUDA runtime, cuBLASLt and NCCL are not in the bundle. They are looked for, once per
# shell (the result is exported as SHARDTRAIN_CUDA_LIBS, which may also be set by hand to a
# colon-separated list of folders), in: $CUDA_HOME and the toolkit of the nvcc on PATH,
# /usr/local/cuda*, the nvidia-* Python wheels of python3 (nvidia-nccl-cu13, nvidia-cublas,
# nvidia-cuda-runtime: their lib folders), and the linker cache.
SHARDTRAIN_BUNDLE="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
export SHARDTRAIN_BUNDLE

# A packed bundle (gpu_bundle.sh packs lib/ and libexec/ when they exceed what a device call
# carries) unpacks itself here once; a lock keeps ranks started together from racing.
if [[ ! -d $SHARDTRAIN_BUNDLE/libexec && -f $SHARDTRAIN_BUNDLE/packed.tar.xz ]]; then
  (
    flock 9 2>/dev/null || true
    if [[ ! -d $SHARDTRAIN_BUNDLE/libexec ]]; then  # libexec/ appears last: the unpack is done
      unpack=$(mktemp -d "$SHARDTRAIN_BUNDLE/.unpack.XXXXXX") &&
        tar -C "$unpack" -xJf "$SHARDTRAIN_BUNDLE/packed.tar.xz" &&
        rm -rf "$SHARDTRAIN_BUNDLE/lib" && mv "$unpack/lib" "$SHARDTRAIN_BUNDLE/lib" &&
        mv "$unpack/libexec" "$SHARDTRAIN_BUNDLE/libexec" ||
        echo "gpu-bundle: cannot unpack $SHARDTRAIN_BUNDLE/packed.tar.xz here" >&2
      rm -rf "$unpack"
    fi
  ) 9>"$SHARDTRAIN_BUNDLE/.unpack.lock"
fi

shardtrain_find_cuda_libs() {
  local roots=() dirs=() soname r hit
  [[ -n ${CUDA_HOME:-} ]] && roots+=("$CUDA_HOME")
  if command -v nvcc >/dev/null 2>&1; then roots+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"); fi
  for r in /usr/local/cuda /usr/local/cuda-*; do [[ -d $r ]] && roots+=("$r"); done
  if command -v python3 >/dev/null 2>&1; then
    while read -r r; do [[ -d $r/nvidia ]] && roots+=("$r/nvidia"); done < <(
      python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2>/dev/null)
  fi
  while read -r soname; do
    [[ -z $soname ]] && continue
    hit=""
    for r in "${roots[@]}"; do
      hit=$(find -L "$r" -maxdepth 5 -name "$soname" -print -quit 2>/dev/null || true)
      [[ -n $hit ]] && break
    done
    if [[ -z $hit ]]; then hit=$(ldconfig -p 2>/dev/null | awk -v s="$soname" '$1 == s {print $NF; exit}'); fi
    if [[ -z $hit ]]; then
      echo "gpu-bundle: $soname not found (CUDA toolkit, nvidia-* wheels, linker cache); set SHARDTRAIN_CUDA_LIBS" >&2
      continue
    fi
    hit=$(dirname "$hit")
    [[ " ${dirs[*]} " == *" $hit "* ]] || dirs+=("$hit")
  done <"$SHARDTRAIN_BUNDLE/lib/cuda-needed.txt"
  local IFS=:
  echo "${dirs[*]}"
}
if [[ -z ${SHARDTRAIN_CUDA_LIBS+x} ]]; then
  SHARDTRAIN_CUDA_LIBS=$(shardtrain_find_cuda_libs)
  export SHARDTRAIN_CUDA_LIBS
fi

# The library path of the bundle's own programs. Only the wrappers put it into LD_LIBRARY_PATH,
# for the program they start: the bundle's libstdc++, libz, libgomp ... are older than a GPU
# machine's and must not reach its other programs (python3 and torch, compute-sanitizer, ncu).
if [[ -z ${SHARDTRAIN_LD_LIBRARY_PATH:-} ]]; then
  SHARDTRAIN_LD_LIBRARY_PATH="$SHARDTRAIN_BUNDLE/lib${SHARDTRAIN_CUDA_LIBS:+:$SHARDTRAIN_CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export SHARDTRAIN_LD_LIBRARY_PATH
fi
export PATH="$SHARDTRAIN_BUNDLE/bin:$PATH"

# Open MPI 4 reads its install paths from these (opal/mca/installdirs/env), PMIx its plugin
# path from its MCA variable; hwloc loads no plugins (its built-in Linux discovery suffices).
export OPAL_PREFIX="$SHARDTRAIN_BUNDLE" OPAL_EXEC_PREFIX="$SHARDTRAIN_BUNDLE"
export OPAL_BINDIR="$SHARDTRAIN_BUNDLE/libexec" OPAL_LIBEXECDIR="$SHARDTRAIN_BUNDLE/libexec"
export OPAL_LIBDIR="$SHARDTRAIN_BUNDLE/lib" OPAL_PKGLIBDIR="$SHARDTRAIN_BUNDLE/lib/openmpi"
export OPAL_DATAROOTDIR="$SHARDTRAIN_BUNDLE/share" OPAL_DATADIR="$SHARDTRAIN_BUNDLE/share"
export OPAL_PKGDATADIR="$SHARDTRAIN_BUNDLE/share/openmpi" OPAL_SYSCONFDIR="$SHARDTRAIN_BUNDLE/etc"
export OMPI_MCA_mca_base_component_path="$SHARDTRAIN_BUNDLE/lib/openmpi"
export OMPI_MCA_mca_base_param_files="$SHARDTRAIN_BUNDLE/etc/openmpi-mca-params.conf"
export PMIX_MCA_mca_base_component_path="$SHARDTRAIN_BUNDLE/lib/pmix"
export PMIX_INSTALL_PREFIX="$SHARDTRAIN_BUNDLE" PMIX_PREFIX="$SHARDTRAIN_BUNDLE"
export HWLOC_PLUGINS_PATH="$SHARDTRAIN_BUNDLE/lib/hwloc"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
