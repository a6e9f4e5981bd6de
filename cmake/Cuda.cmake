# CUDA is detected, never installed. AUTO builds the CUDA targets whenever nvcc is found;
# ON makes a missing toolkit an error; OFF skips them. No GPU is needed to build.
set(SHARDTRAIN_HAVE_CUDA OFF)
if(NOT SHARDTRAIN_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER)
    find_program(_nvcc nvcc HINTS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
    if(_nvcc)
      set(CMAKE_CUDA_COMPILER ${_nvcc})
    endif()
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # sm_80 (A100) and sm_90 (H100): the GPUs our users train on.
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
    # CMake 3.25 (Debian bookworm) has no CUDA20 dialect for nvcc; device code is C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(SHARDTRAIN_HAVE_CUDA ON)
    message(STATUS "shardtrain: building CUDA targets with ${CMAKE_CUDA_COMPILER}")
  elseif(SHARDTRAIN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SHARDTRAIN_CUDA=ON but no nvcc was found (set CUDA_HOME or PATH)")
  else()
    message(STATUS "shardtrain: nvcc not found, CUDA targets skipped")
  endif()
endif()

# NCCL: the GPU communicator (runtime/cuda/nccl_comm.*). Chosen for device memory because it
# moves GPU buffers over NVLink/InfiniBand without host copies, which the MPI rings cannot. It
# ships no CMake package, so header and library are looked up by hand (the toolkit's folders,
# NCCL_HOME, /usr/local). Without it the NCCL communicator is skipped, the rest still builds.
set(SHARDTRAIN_HAVE_NCCL OFF)
if(SHARDTRAIN_HAVE_CUDA)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME
            PATHS /usr/local/include PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME
               PATHS /usr/local/lib PATH_SUFFIXES lib lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    add_library(shardtrain::nccl UNKNOWN IMPORTED)
    set_target_properties(shardtrain::nccl PROPERTIES IMPORTED_LOCATION ${NCCL_LIBRARY}
                          INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
    set(SHARDTRAIN_HAVE_NCCL ON)
    message(STATUS "shardtrain: NCCL ${NCCL_LIBRARY}")
  else()
    message(STATUS "shardtrain: NCCL not found, the NCCL communicator is skipped")
  endif()
endif()
