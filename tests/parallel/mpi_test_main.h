// mpi_test_main.h — a GoogleTest main for tests run under mpirun: MPI up before the tests,
// down after, and only rank 0's report printed (every rank still runs every assertion, and a
// failing rank makes mpirun, and so ctest, fail).
#pragma once

#include <gtest/gtest.h>

#include "runtime/mpi_comm.h"

namespace shardtrain::testing {

inline MpiRuntime* g_mpi = nullptr;

inline int run_mpi_tests(int argc, char** argv) {
  MpiRuntime mpi(&argc, &argv);
  g_mpi = &mpi;
  ::testing::InitGoogleTest(&argc, argv);
  if (mpi.world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  // Agree on the outcome so that every rank exits with the same code.
  double failed = rc != 0 ? 1.0 : 0.0;
  mpi.world().all_reduce_f64(&failed, 1, /*max=*/true);
  if (failed != 0 && mpi.world_rank() == 0 && rc == 0) {
    std::fprintf(stderr, "a test failed on another rank\n");
  }
  g_mpi = nullptr;
  return failed != 0 ? 1 : 0;
}

}  // namespace shardtrain::testing
