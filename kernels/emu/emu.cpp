// emu.cpp — the block scheduler behind emu.h: fibers, the barrier, warp collectives, the
// shared-memory arena and its race detector.
//
// One block at a time: its threads become ucontext fibers on pooled, guard-paged stacks. The
// scheduler resumes every live fiber in turn; a fiber runs until it must wait (barrier, warp
// collective) or finishes. Every state change bumps `epoch`; a full pass over the live fibers
// with no change is a deadlock, reported with where each fiber waits. Faults raised inside a
// fiber are caught in its entry function (exceptions must not cross a context switch), the
// block is abandoned (its fibers are never resumed; their stacks are reused), and run_grid
// throws the message on the host thread.
#include "kernels/emu/emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <memory>
#include <sstream>
#include <vector>

namespace shardtrain::emu::detail {

thread_local ThreadState* t_current = nullptr;
// The kernel body every fiber of the running grid calls (set by run_grid).
thread_local const std::function<void()>* t_body = nullptr;

namespace {

// 64 KiB of stack per emulated thread: kernels keep a few hundred bytes of registers' worth of
// locals; the rest is headroom for g++ at -O0 and for unwinding a Fault (a few KiB).
constexpr size_t kStackBytes = 64 * 1024;
// Shared memory is tracked per 2-byte granule: the smallest element kernels store there
// (bf16/f16), so two threads writing the two halves of one 32-bit word are not a race.
constexpr size_t kGranule = 2;
constexpr uint8_t kPoison = 0xff;  // fresh shared memory: NaN as float, -1 as int

// A mmap'd stack with a PROT_NONE guard page below it: an overflow is a SIGSEGV at the
// guard, not silent corruption of the neighbouring fiber.
struct Stack {
  void* base = nullptr;
  size_t bytes = 0;
  Stack() {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    bytes = kStackBytes + page;
    base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw Fault("emu: cannot map a fiber stack");
    mprotect(base, page, PROT_NONE);
  }
  ~Stack() { munmap(base, bytes); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
};

enum class Wait : int { kNone, kBarrier, kWarp };

// One cp.async of the thread, its source read at issue, landing in shared memory at the wait.
struct AsyncCopy {
  unsigned char* dst;
  unsigned char bytes[16];
  size_t n;
};

struct Fiber {
  ucontext_t ctx;
  ThreadState state;
  bool done = false;
  Wait waiting = Wait::kNone;
  std::vector<AsyncCopy> open_copies;               // issued since the last commit
  std::vector<std::vector<AsyncCopy>> copy_groups;  // committed, oldest first
};

// One warp's exchange: at most one collective round is in flight per warp.
struct WarpExchange {
  enum class Phase { kIdle, kCollecting, kDraining } phase = Phase::kIdle;
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  unsigned arrived = 0;
  int left = 0;        // lanes still to read the result (draining)
  uint64_t round = 0;  // rounds started
  uint64_t values[32] = {};
  WarpFn fn = nullptr;       // kWide: the operation every lane of the round must name
  uint32_t full_rounds = 0;  // completed rounds whose mask was every lane of the warp
};

// Race-detector state of one granule, valid for barrier phase `phase` only.
struct Shadow {
  uint32_t phase = ~0u;
  int16_t writer = -1;       // thread id, -1 none
  int16_t reader = -1;       // thread id, -1 none, -2 several
  int16_t reader_warp = -1;  // the readers' common warp, -1 if they span warps
  bool writer_atomic = false;
  uint32_t writer_round = 0;  // the writer's warp's full_rounds at the write
  uint32_t reader_round = 0;  // max over the readers
};

constexpr int16_t kManyReaders = -2;

struct Block {
  dim3 grid, dim;
  uint3 idx;
  int nthreads = 0;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  uint64_t epoch = 0;
  int exited = 0;
  bool faulted = false;
  std::string fault;
  int current = -1;  // running fiber
  // Barrier. Phases are numbered across the whole launch (block after block), so the race
  // detector's shadow never needs clearing: an entry from an older phase is simply stale.
  int barrier_arrived = 0;
  uint32_t phase_base = 0;
  uint32_t barrier_phase = 0;
  // Warps.
  std::vector<WarpExchange> warps;
  // Shared memory: [0, dynamic_bytes) dynamic, then static declarations in first-use order.
  std::vector<unsigned char> arena;
  size_t dynamic_bytes = 0;
  size_t static_bytes = 0;
  std::vector<std::pair<const void*, size_t>> sites;  // declaration site -> arena offset
  std::vector<Shadow> shadow;
};

thread_local Block* t_block = nullptr;
thread_local std::vector<std::unique_ptr<Stack>> t_stacks;

std::string coord(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

std::string where(const Block& b, int tid) {
  return "block " + coord(b.idx) + " thread " + std::to_string(tid) + " " +
         coord(b.fibers[size_t(tid)].state.thread_idx);
}

// Runs on the fiber: gives control back to the scheduler.
void yield() {
  Block& b = *t_block;
  Fiber& f = b.fibers[size_t(b.current)];
  swapcontext(&f.ctx, &b.scheduler);
}

// Thrown inside a fiber to unwind it after another fiber faulted (never leaves the fiber).
struct Abandon {};

template <class Pred>
void wait_until(Wait kind, Pred pred) {
  Block& b = *t_block;
  Fiber& f = b.fibers[size_t(b.current)];
  while (!pred()) {
    f.waiting = kind;
    yield();
    if (b.faulted) throw Abandon{};
  }
  f.waiting = Wait::kNone;
}

void fiber_entry() {
  Block& b = *t_block;
  Fiber& f = b.fibers[size_t(b.current)];
  try {
    (*t_body)();
  } catch (const Abandon&) {
  } catch (const std::exception& e) {
    if (!b.faulted) {
      b.faulted = true;
      b.fault = where(b, f.state.tid) + ": " + e.what();
    }
  }
  f.done = true;
  ++b.exited;
  ++b.epoch;
  // uc_link returns to the scheduler.
}

std::string deadlock_report(const Block& b) {
  std::ostringstream os;
  os << "deadlock in block " << coord(b.idx) << ":";
  int shown = 0;
  for (const Fiber& f : b.fibers) {
    if (f.done || shown >= 8) continue;
    os << " thread " << f.state.tid << " waits at "
       << (f.waiting == Wait::kBarrier ? "__syncthreads" : "a warp collective") << ";";
    ++shown;
  }
  os << " " << b.exited << " of " << b.nthreads << " threads exited";
  return os.str();
}

}  // namespace

void fail(const std::string& what) { throw Fault(what); }

// ---- Barrier ------------------------------------------------------------------------------

void syncthreads() {
  Block& b = *t_block;
  if (b.exited > 0) fail("__syncthreads after some threads of the block exited");
  const uint32_t phase = b.barrier_phase;
  ++b.epoch;
  if (++b.barrier_arrived == b.nthreads) {
    b.barrier_arrived = 0;
    ++b.barrier_phase;
    return;
  }
  wait_until(Wait::kBarrier, [&] {
    if (b.barrier_phase != phase) return true;  // released (its last arriver may exit since)
    if (b.exited > 0) fail("__syncthreads not reached by every thread (some exited)");
    return false;
  });
}

// ---- Warp collectives ----------------------------------------------------------------------

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, WarpFn fn) {
  Block& b = *t_block;
  const int tid = b.current;
  const int lane = tid % kWarpSize, warp = tid / kWarpSize;
  WarpExchange& w = b.warps[size_t(warp)];
  // 1. The mask: the caller is in it; every lane in it exists and is alive.
  if (!(mask >> lane & 1u)) fail("warp collective: calling lane not in mask");
  const int lanes = std::min(kWarpSize, b.nthreads - warp * kWarpSize);
  const unsigned existing = lanes == 32 ? ~0u : (1u << lanes) - 1u;
  if (mask & ~existing) fail("warp collective: mask names lanes that do not exist");
  if (width <= 0 || width > 32 || (width & (width - 1))) fail("warp collective: bad width");
  for (int l = 0; l < lanes; ++l) {
    if ((mask >> l & 1u) && b.fibers[size_t(warp * kWarpSize + l)].done) {
      fail("warp collective: mask names lane " + std::to_string(l) + ", which has exited");
    }
  }
  // 2. Join the warp's round (wait while another round drains or a disjoint one collects).
  wait_until(Wait::kWarp, [&] {
    if (w.phase == WarpExchange::Phase::kIdle) return true;
    if (w.phase == WarpExchange::Phase::kCollecting) {
      if (w.mask == mask) {
        if (w.op != op || w.fn != fn) {
          fail("warp collective: lanes of one mask execute different collectives");
        }
        return true;
      }
      if (w.mask & mask) fail("warp collective: overlapping masks differ (divergent lanes)");
    }
    return false;
  });
  if (w.phase == WarpExchange::Phase::kIdle) {
    w.phase = WarpExchange::Phase::kCollecting;
    w.op = op;
    w.mask = mask;
    w.fn = fn;
    w.arrived = 0;
    ++w.round;
  }
  const uint64_t my_round = w.round;
  w.values[lane] = value;
  w.arrived |= 1u << lane;
  ++b.epoch;
  if (w.arrived == mask) {
    w.phase = WarpExchange::Phase::kDraining;
    w.left = std::popcount(mask);
    if (mask == existing) ++w.full_rounds;
    if (op == WarpOp::kWide) {  // every other lane is parked: run the warp-wide operation once
      void* lane_data[32];
      for (int l = 0; l < 32; ++l) {
        lane_data[l] = (mask >> l & 1u) ? reinterpret_cast<void*>(w.values[l]) : nullptr;
      }
      fn(lane_data, mask);
    }
  } else {
    wait_until(Wait::kWarp, [&] {
      for (int l = 0; l < lanes; ++l) {
        if ((mask >> l & 1u) && !(w.arrived >> l & 1u) &&
            b.fibers[size_t(warp * kWarpSize + l)].done) {
          fail("warp collective: lane " + std::to_string(l) + " of the mask exited without it");
        }
      }
      return w.round == my_round && w.phase == WarpExchange::Phase::kDraining;
    });
  }
  // 3. The result.
  uint64_t result = 0;
  const int seg = lane & ~(width - 1);  // first lane of this lane's width-segment
  int src = lane;
  switch (op) {
    case WarpOp::kSync:
    case WarpOp::kWide:
      break;
    case WarpOp::kShflIdx:
      src = seg + (arg & (width - 1));
      break;
    case WarpOp::kShflUp:
      src = (lane - seg) >= arg ? lane - arg : lane;
      break;
    case WarpOp::kShflDown:
      src = (lane - seg) + arg < width ? lane + arg : lane;
      break;
    case WarpOp::kShflXor: {
      int s = lane ^ arg;
      src = s >= seg + width || s < 0 || s >= 32 ? lane : s;
      break;
    }
    case WarpOp::kBallot:
    case WarpOp::kAll:
    case WarpOp::kAny: {
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l) {
        if ((mask >> l & 1u) && w.values[l]) ballot |= 1u << l;
      }
      result = op == WarpOp::kBallot ? ballot : op == WarpOp::kAll ? ballot == mask : ballot != 0;
      break;
    }
  }
  if (op >= WarpOp::kShflIdx && op <= WarpOp::kShflXor) {
    if (!(mask >> src & 1u)) {
      fail("warp shuffle: lane " + std::to_string(lane) + " reads lane " + std::to_string(src) +
           ", which is not in the mask");
    }
    result = w.values[src];
  }
  if (--w.left == 0) w.phase = WarpExchange::Phase::kIdle;
  ++b.epoch;
  return result;
}

// ---- Shared memory ---------------------------------------------------------------------------

namespace {

void poison(Block& b, size_t begin, size_t end) {
  std::memset(b.arena.data() + begin, kPoison, end - begin);
}

}  // namespace

void* static_shared(const void* site, size_t bytes, size_t align) {
  Block& b = *t_block;
  for (const auto& [s, off] : b.sites) {
    if (s == site) return b.arena.data() + off;
  }
  // First thread to reach this declaration places it; alignment at least 16 (launch.h
  // declares static shared arrays __align__(16) on the GPU too).
  align = std::max<size_t>(align, 16);
  size_t off = (b.dynamic_bytes + b.static_bytes + align - 1) / align * align;
  size_t end = off + bytes;
  if (end - b.dynamic_bytes > kStaticSharedLimit) fail("static shared memory exceeds 48 KiB");
  if (end > kMaxSharedBytes) fail("shared memory exceeds the 227 KiB per-block maximum");
  b.static_bytes = end - b.dynamic_bytes;
  b.sites.emplace_back(site, off);
  poison(b, off, end);
  return b.arena.data() + off;
}

void* dynamic_shared(size_t* bytes) {
  Block& b = *t_block;
  *bytes = b.dynamic_bytes;
  return b.arena.data();
}

void async_copy(void* shared_dst, const void* src, size_t bytes, size_t src_bytes) {
  Block& b = *t_block;
  auto* d = static_cast<unsigned char*>(shared_dst);
  if (d < b.arena.data() || d + bytes > b.arena.data() + b.arena.size()) {
    fail("cp.async destination outside the block's shared memory");
  }
  if ((bytes != 4 && bytes != 8 && bytes != 16) || src_bytes > bytes) fail("cp.async: bad size");
  if (reinterpret_cast<uintptr_t>(d) % bytes != 0 ||
      (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % bytes != 0)) {
    fail("cp.async: misaligned address");
  }
  // The write is checked now (the hardware may write at any time from here on: a read of the
  // same bytes by another thread before the next barrier is a race) and again when it lands.
  shared_access(d, bytes, true, false);
  AsyncCopy c{d, {}, bytes};
  if (src_bytes > 0) std::memcpy(c.bytes, src, src_bytes);  // the rest stays zero (zero-fill)
  b.fibers[size_t(b.current)].open_copies.push_back(c);
}

void async_commit() {
  Fiber& f = t_block->fibers[size_t(t_block->current)];
  f.copy_groups.push_back(std::move(f.open_copies));
  f.open_copies.clear();
}

void async_wait(int groups_in_flight) {
  Fiber& f = t_block->fibers[size_t(t_block->current)];
  while (f.copy_groups.size() > size_t(groups_in_flight)) {
    for (const AsyncCopy& c : f.copy_groups.front()) {
      shared_access(c.dst, c.n, true, false);
      std::memcpy(c.dst, c.bytes, c.n);
    }
    f.copy_groups.erase(f.copy_groups.begin());
  }
}

void shared_access(const void* p, size_t bytes, bool write, bool atomic) {
  Block& b = *t_block;
  const auto* cp = static_cast<const unsigned char*>(p);
  if (cp < b.arena.data() || cp + bytes > b.arena.data() + b.arena.size()) {
    fail("shared access outside the block's shared memory");
  }
  const size_t off = size_t(cp - b.arena.data());
  const int tid = b.current;
  const int warp = tid / kWarpSize;
  const uint32_t round = b.warps[size_t(warp)].full_rounds;
  // Ordered: the other access came from this warp before a full-warp sync this thread passed.
  auto ordered = [&](int other, uint32_t other_round) {
    return other / kWarpSize == warp && round > other_round;
  };
  auto race = [&](const char* kind, int other) {
    fail(std::string("shared-memory race (") + kind + ") at byte " + std::to_string(off) +
         " between thread " + std::to_string(other) + " and thread " + std::to_string(tid) +
         " after barrier " + std::to_string(b.barrier_phase - b.phase_base));
  };
  for (size_t g = off / kGranule; g <= (off + bytes - 1) / kGranule; ++g) {
    Shadow& s = b.shadow[g];
    if (s.phase != b.barrier_phase) s = Shadow{b.barrier_phase};
    if (s.writer >= 0 && s.writer != tid && !(atomic && s.writer_atomic) &&
        !ordered(s.writer, s.writer_round)) {
      race(write ? "write after write" : "read after write", s.writer);
    }
    if (!write) {
      if (s.reader == -1) {
        s.reader = int16_t(tid);
        s.reader_warp = int16_t(warp);
      } else if (s.reader != tid) {
        s.reader = kManyReaders;
        if (s.reader_warp != warp) s.reader_warp = -1;
      }
      s.reader_round = std::max(s.reader_round, round);
      continue;
    }
    if (s.reader >= 0 && s.reader != tid && !ordered(s.reader, s.reader_round)) {
      race("write after read", s.reader);
    }
    if (s.reader == kManyReaders && !(s.reader_warp == warp && round > s.reader_round)) {
      race("write after reads by several threads", -1);
    }
    s.writer = int16_t(tid);
    s.writer_atomic = atomic;
    s.writer_round = round;
  }
}

// ---- Grid ----------------------------------------------------------------------------------

namespace {

// Puts fiber t at the start of the kernel body. Out of line: getcontext returns twice, which
// would make every local of the caller a -Wclobbered suspect.
__attribute__((noinline)) void init_fiber(Block& b, uint64_t t) {
  Fiber& f = b.fibers[t];
  f.done = false;
  f.waiting = Wait::kNone;
  f.open_copies.clear();
  f.copy_groups.clear();
  f.state.tid = int(t);
  f.state.thread_idx = {unsigned(t % b.dim.x), unsigned(t / b.dim.x % b.dim.y),
                        unsigned(t / (uint64_t(b.dim.x) * b.dim.y))};
  f.state.block_idx = b.idx;
  f.state.block_dim = b.dim;
  f.state.grid_dim = b.grid;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = static_cast<char*>(t_stacks[t]->base) + sysconf(_SC_PAGESIZE);
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = &b.scheduler;
  makecontext(&f.ctx, fiber_entry, 0);
}

}  // namespace

void run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body) {
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.z > 64) {
    throw Fault("launch: invalid block size " + std::to_string(nthreads));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    throw Fault("launch: invalid grid");
  }
  if (dynamic_smem > kMaxSharedBytes) throw Fault("launch: dynamic shared memory too large");
  while (t_stacks.size() < nthreads) t_stacks.push_back(std::make_unique<Stack>());
  const std::function<void()>* saved_body = t_body;
  t_body = &body;

  Block b;
  b.grid = grid;
  b.dim = block;
  b.nthreads = int(nthreads);
  b.fibers.resize(nthreads);
  b.warps.resize((nthreads + kWarpSize - 1) / kWarpSize);
  b.arena.resize(kMaxSharedBytes);
  b.shadow.resize(kMaxSharedBytes / kGranule);
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        // 1. Reset the block: fibers at their entry, fresh barrier/warps/arena.
        b.idx = {bx, by, bz};
        b.epoch = 0;
        b.exited = 0;
        b.barrier_arrived = 0;
        b.phase_base = b.barrier_phase + 1;
        b.barrier_phase = b.phase_base;
        std::fill(b.warps.begin(), b.warps.end(), WarpExchange{});
        b.dynamic_bytes = dynamic_smem;
        b.static_bytes = 0;
        b.sites.clear();
        poison(b, 0, dynamic_smem);
        for (uint64_t t = 0; t < nthreads; ++t) init_fiber(b, t);
        // 2. Round-robin until every fiber is done, a fault, or a pass without progress.
        Block* saved_block = t_block;
        ThreadState* saved_state = t_current;
        t_block = &b;
        while (b.exited < b.nthreads && !b.faulted) {
          const uint64_t before = b.epoch;
          for (int t = 0; t < b.nthreads && !b.faulted; ++t) {
            Fiber& f = b.fibers[size_t(t)];
            if (f.done) continue;
            b.current = t;
            t_current = &f.state;
            swapcontext(&b.scheduler, &f.ctx);
          }
          if (!b.faulted && b.exited < b.nthreads && b.epoch == before) {
            b.faulted = true;
            b.fault = deadlock_report(b);
          }
        }
        t_block = saved_block;
        t_current = saved_state;
        if (b.faulted) {
          t_body = saved_body;
          throw Fault("emu: " + b.fault);
        }
      }
    }
  }
  t_body = saved_body;
}

}  // namespace shardtrain::emu::detail
