// The fiber scheduler behind cuda_emulation.hpp: one block at a time, its threads as ucontext
// fibers that run until they reach a barrier or a shuffle, then hand control back here.
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emulation.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

namespace dtpm_emulation {
namespace {

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr int kWarpSize = 32;
constexpr std::size_t kDefaultSharedLimit = 48 * 1024;

enum class State { Runnable, AtBarrier, AtExchange, Done };

struct Fiber {
  ucontext_t context{};
  char* stack = nullptr;
  State state = State::Runnable;
  ThreadCoordinates coordinates{};
  unsigned mask = 0;  // the pending exchange
  int source = 0;
  std::uint64_t offered = 0, received = 0;
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<unsigned char> shared;
  ucontext_t scheduler{};
  const void* scheduler_stack = nullptr;  // for AddressSanitizer
  std::size_t scheduler_stack_size = 0;
  int current = -1;
  const std::function<void()>* body = nullptr;
  std::string error;  // first failure inside a fiber; the launch stops at it
};

// AddressSanitizer must hear of every stack switch, or it reports false errors (the test suite
// runs this file under it). fake_stack: nullptr when the stack being left is finished with.
void before_switch([[maybe_unused]] void** fake_stack, [[maybe_unused]] const void* bottom,
                   [[maybe_unused]] std::size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#endif
}
void after_switch([[maybe_unused]] void* fake_stack, [[maybe_unused]] const void** old_bottom,
                  [[maybe_unused]] std::size_t* old_size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack, old_bottom, old_size);
#endif
}

Block* g_block = nullptr;  // the block being run (launches are not reentrant)
int g_order = 0;
std::uint64_t g_seed = 0;

Fiber& current_fiber() {
  if (g_block == nullptr || g_block->current < 0)
    throw std::logic_error("a CUDA device function was called outside an emulated kernel");
  return g_block->fibers[static_cast<std::size_t>(g_block->current)];
}

void yield_to_scheduler() {
  Fiber& self = current_fiber();
  void* fake_stack = nullptr;
  before_switch(&fake_stack, g_block->scheduler_stack, g_block->scheduler_stack_size);
  swapcontext(&self.context, &g_block->scheduler);
  after_switch(fake_stack, &g_block->scheduler_stack, &g_block->scheduler_stack_size);
}

/// Records the failure and leaves the fiber for good (the scheduler abandons the launch).
[[noreturn]] void fail(const std::string& what) {
  Fiber& self = current_fiber();
  if (g_block->error.empty())
    g_block->error = "thread " + std::to_string(self.coordinates.thread_idx.x) + " of block " +
                     std::to_string(self.coordinates.block_idx.x) + ": " + what;
  self.state = State::Done;
  before_switch(nullptr, g_block->scheduler_stack, g_block->scheduler_stack_size);
  swapcontext(&self.context, &g_block->scheduler);
  std::terminate();  // never resumed
}

void fiber_entry() {
  after_switch(nullptr, &g_block->scheduler_stack, &g_block->scheduler_stack_size);
  try {
    (*g_block->body)();
  } catch (const std::exception& e) {
    if (g_block->error.empty()) g_block->error = std::string("exception in a kernel: ") + e.what();
  }
  current_fiber().state = State::Done;
  before_switch(nullptr, g_block->scheduler_stack, g_block->scheduler_stack_size);
  // returning resumes uc_link, the scheduler
}

std::string hex(unsigned v) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", v);
  return text;
}

/// Completes every warp exchange whose lanes have all arrived; throws on a malformed one.
bool release_exchanges(Block& block) {
  bool released = false;
  const int n = static_cast<int>(block.fibers.size());
  for (int first = 0; first < n; first += kWarpSize) {
    for (int lane = 0; lane < kWarpSize && first + lane < n; ++lane) {
      Fiber& f = block.fibers[first + lane];
      if (f.state != State::AtExchange) continue;
      bool ready = true;
      for (int other = 0; other < kWarpSize; ++other) {
        if (!(f.mask >> other & 1u)) continue;
        if (first + other >= n)
          throw std::runtime_error("shuffle mask " + hex(f.mask) + " names lane " + std::to_string(other) +
                                   " beyond the block's " + std::to_string(n) + " threads");
        const Fiber& o = block.fibers[first + other];
        if (o.state == State::Done)
          throw std::runtime_error("warp " + std::to_string(first / kWarpSize) + ": lane " +
                                   std::to_string(lane) + " waits in a shuffle (mask " + hex(f.mask) +
                                   ") for lane " + std::to_string(other) + ", which has exited");
        if (o.state == State::AtExchange && o.mask != f.mask)
          throw std::runtime_error("warp " + std::to_string(first / kWarpSize) + ": lanes " +
                                   std::to_string(lane) + " and " + std::to_string(other) +
                                   " shuffle with different masks " + hex(f.mask) + " and " + hex(o.mask));
        if (o.state != State::AtExchange) ready = false;
      }
      if (!ready) continue;
      for (int other = 0; other < kWarpSize; ++other)
        if (f.mask >> other & 1u) {
          Fiber& o = block.fibers[first + other];
          o.received = block.fibers[first + o.source].offered;
        }
      for (int other = 0; other < kWarpSize; ++other)
        if (f.mask >> other & 1u) block.fibers[first + other].state = State::Runnable;
      released = true;
    }
  }
  return released;
}

/// Releases __syncthreads() once every thread of the block has reached it. A thread that exited
/// while others wait means the barrier sits in code the block does not run uniformly: undefined
/// in CUDA (it hangs or corrupts on some GPUs), an error here.
bool release_barrier(Block& block) {
  int waiting = 0, exited = 0;
  for (const Fiber& f : block.fibers) {
    if (f.state == State::AtExchange || f.state == State::Runnable) return false;
    waiting += f.state == State::AtBarrier;
    exited += f.state == State::Done;
  }
  if (waiting == 0) return false;
  if (exited > 0)
    throw std::runtime_error("block " + std::to_string(block.fibers[0].coordinates.block_idx.x) + ": " +
                             std::to_string(waiting) + " threads wait in __syncthreads() while " +
                             std::to_string(exited) + " have exited (a barrier in divergent code)");
  for (Fiber& f : block.fibers) f.state = State::Runnable;
  return true;
}

std::string describe_deadlock(const Block& block) {
  int at_barrier = 0, at_exchange = 0, done = 0;
  for (const Fiber& f : block.fibers) {
    at_barrier += f.state == State::AtBarrier;
    at_exchange += f.state == State::AtExchange;
    done += f.state == State::Done;
  }
  return "deadlock in block " + std::to_string(block.fibers[0].coordinates.block_idx.x) + ": " +
         std::to_string(at_barrier) + " threads in __syncthreads(), " + std::to_string(at_exchange) +
         " in a shuffle, " + std::to_string(done) + " exited";
}

void run_block(Block& block, std::vector<std::unique_ptr<char[]>>& stacks, std::mt19937_64& rng) {
  const int n = static_cast<int>(block.fibers.size());
  std::fill(block.shared.begin(), block.shared.end(), 0xFF);  // NaN as float and double, -1 as int
  for (int t = 0; t < n; ++t) {
    Fiber& f = block.fibers[t];
    f.state = State::Runnable;
    getcontext(&f.context);
    f.stack = stacks[t].get();
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &block.scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (g_order == 1) std::reverse(order.begin(), order.end());
  while (true) {
    if (g_order == 2) std::shuffle(order.begin(), order.end(), rng);
    for (const int t : order) {
      if (block.fibers[t].state != State::Runnable) continue;
      block.current = t;
      void* fake_stack = nullptr;
      before_switch(&fake_stack, block.fibers[t].stack, kStackBytes);
      swapcontext(&block.scheduler, &block.fibers[t].context);
      after_switch(fake_stack, nullptr, nullptr);
      block.current = -1;
      if (!block.error.empty()) throw std::runtime_error("CUDA emulation: " + block.error);
    }
    if (std::all_of(block.fibers.begin(), block.fibers.end(),
                    [](const Fiber& f) { return f.state == State::Done; }))
      return;
    if (release_exchanges(block) || release_barrier(block)) continue;
    throw std::runtime_error("CUDA emulation: " + describe_deadlock(block));
  }
}

}  // namespace

const ThreadCoordinates& coordinates() { return current_fiber().coordinates; }

void* dynamic_shared_bytes() {
  current_fiber();  // inside a kernel only
  return g_block->shared.empty() ? nullptr : g_block->shared.data();
}

void sync_threads() {
  current_fiber().state = State::AtBarrier;
  yield_to_scheduler();
}

std::uint64_t exchange(unsigned mask, std::uint64_t bits, int source_lane, int width) {
  Fiber& self = current_fiber();
  const int lane = static_cast<int>(self.coordinates.thread_idx.x % kWarpSize);
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0)
    fail("shuffle width " + std::to_string(width) + " is not a power of two in [1, 32]");
  if (source_lane < 0 || source_lane >= kWarpSize)
    fail("shuffle source lane " + std::to_string(source_lane) + " is outside the warp");
  if (!(mask >> lane & 1u))
    fail("shuffle mask " + hex(mask) + " omits the calling lane " + std::to_string(lane));
  if (!(mask >> source_lane & 1u))
    fail("lane " + std::to_string(lane) + " reads lane " + std::to_string(source_lane) +
         " outside the shuffle mask " + hex(mask));
  self.mask = mask;
  self.source = source_lane;
  self.offered = bits;
  self.state = State::AtExchange;
  yield_to_scheduler();
  return self.received;
}

void run_grid(int blocks, int threads, std::size_t shared_bytes, const std::function<void()>& body) {
  if (blocks < 1 || threads < 1 || threads > 1024)
    throw std::invalid_argument("CUDA emulation: bad launch configuration (" + std::to_string(blocks) +
                                " blocks of " + std::to_string(threads) + " threads)");
  // Without cudaFuncSetAttribute(..., cudaFuncAttributeMaxDynamicSharedMemorySize, ...), which
  // the kernels do not call, a launch asking for more than 48 KiB fails on every GPU.
  if (shared_bytes > kDefaultSharedLimit)
    throw std::invalid_argument(
        "CUDA emulation: " + std::to_string(shared_bytes) +
        " bytes of dynamic shared memory exceed the 48 KiB a launch gets without opting in");
  if (g_block != nullptr) throw std::logic_error("CUDA emulation: nested kernel launch");
  std::vector<std::unique_ptr<char[]>> stacks;
  for (int t = 0; t < threads; ++t) stacks.emplace_back(new char[kStackBytes]);
  Block block;
  block.fibers.resize(static_cast<std::size_t>(threads));
  block.shared.resize(shared_bytes);
  block.body = &body;
  std::mt19937_64 rng(g_seed);
  g_block = &block;
  try {
    for (int b = 0; b < blocks; ++b) {
      for (int t = 0; t < threads; ++t)
        block.fibers[t].coordinates = ThreadCoordinates{{static_cast<unsigned>(t), 0, 0},
                                                        {static_cast<unsigned>(b), 0, 0},
                                                        {static_cast<unsigned>(threads), 1, 1},
                                                        {static_cast<unsigned>(blocks), 1, 1}};
      run_block(block, stacks, rng);
    }
  } catch (...) {
    g_block = nullptr;
    throw;
  }
  g_block = nullptr;
}

void set_schedule(int order, std::uint64_t seed) {
  if (order < 0 || order > 2) throw std::invalid_argument("CUDA emulation: schedule order must be 0, 1 or 2");
  g_order = order;
  g_seed = seed;
}

}  // namespace dtpm_emulation
