// The runtime of the CUDA emulation (cuda_emulation.h): the scheduler that runs a launch's
// blocks and threads (fibers or OS threads), the synchronisation rules, and the host runtime API
// on host memory. Test-only (python_tests/cuda_emulation/emulation_build.py).
#include "emulation/cuda_emulation.h"
#undef warpSize  // the device built-in; the runtime means the cudaDeviceProp field

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace rgf_emu {

thread_local ThreadIndex current;

namespace {

// ------------------------------------------------------------------ H100 / H200 (sm_90) limits
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned kMaxGridDim[3] = {2147483647u, 65535u, 65535u};
constexpr size_t kStaticSharedLimit = 48 * 1024;     // static, and dynamic without opt-in
constexpr size_t kOptinSharedLimit = 227 * 1024;     // cudaDevAttrMaxSharedMemoryPerBlockOptin
constexpr size_t kSharedPerSM = 228 * 1024;
constexpr size_t kFiberStack = 512 * 1024;

struct Options {
  int mode = 0;  // 0 fibers, 1 OS threads
  uint64_t block_seed = 0;
  uint64_t thread_seed = 0;
  int sm_count = 132;  // H100 SXM / H200
};

std::mutex g_mutex;  // guards everything below (host API calls may come from several threads)
Options g_options;
cudaError_t g_sticky = cudaSuccess;  // a fault inside a kernel, as a corrupted CUDA context
std::string g_report;                // faults since the last reset, one per line
std::string g_sticky_text;
uint64_t g_launches = 0, g_blocks = 0;
std::map<const void*, size_t> g_allocations;
std::set<const void*> g_streams, g_events;
std::map<const void*, std::chrono::steady_clock::time_point> g_event_time;
std::map<const void*, int> g_max_dynamic_shared;
uint64_t g_release_threshold = 0;
CUmemPoolHandle_st* const kPool = reinterpret_cast<CUmemPoolHandle_st*>(0x7001);
thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t result(cudaError_t err) {
  if (err != cudaSuccess) t_last_error = err;
  return err;
}
// Every API call returns the sticky fault, once there is one.
#define RGF_EMU_API_BEGIN                  \
  std::lock_guard<std::mutex> lock(g_mutex); \
  if (g_sticky != cudaSuccess) return result(g_sticky)

bool valid_stream(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread || g_streams.count(s);
}

void fill_garbage(void* p, size_t bytes, uint64_t seed) {
  if (seed == 0) {
    std::memset(p, 0xFF, bytes);  // NaN as float32/float64, -1 as an integer
    return;
  }
  std::mt19937_64 rng(seed);
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < bytes; ++i) b[i] = static_cast<unsigned char>(rng());
}

// ------------------------------------------------------------------ one block's threads
struct KernelAbort {};  // thrown in every thread of a block that faulted, to unwind it

enum Status { kRunning, kAtBarrier, kAtWarp, kExited };

struct EThread {
  Status status = kRunning;
  bool abort = false;
  const char* file = nullptr;
  int line = 0;
  WarpOp op = kSyncWarp;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
};

const char* op_name(WarpOp op) {
  switch (op) {
    case kShflIdx: return "__shfl_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kSyncWarp: return "__syncwarp";
    case kBallot: return "__ballot_sync";
  }
  return "?";
}

std::string site(const char* file, int line) {
  const char* rel = file ? std::strstr(file, "csrc/") : nullptr;
  return std::string(rel ? rel : (file ? file : "?")) + ":" + std::to_string(line);
}

// The synchronisation state of the running block. With fibers it is touched by one OS thread
// at a time; with OS threads, under `mutex`.
struct Block {
  const LaunchSite* launch = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  dim3 grid, dim, index;
  int n = 0;
  int live = 0;     // not exited
  int running = 0;  // neither exited nor waiting
  std::vector<EThread> t;
  int at_barrier = 0;                // threads waiting at __syncthreads
  std::vector<unsigned> warp_live;   // per warp: lanes not exited
  std::vector<unsigned> warp_wait;   // per warp: lanes waiting at a warp operation
  std::string fault;  // the first broken rule, empty if none
  uint64_t serial = 0;
  std::mutex mutex;
  std::condition_variable cv;

  uint3 thread_index(int tid) const {
    return uint3{static_cast<unsigned>(tid) % dim.x, (static_cast<unsigned>(tid) / dim.x) % dim.y,
                 static_cast<unsigned>(tid) / (dim.x * dim.y)};
  }

  std::string where() const {
    std::ostringstream o;
    o << launch->name << " (launched at " << site(launch->file, launch->line) << "), block (" << index.x << ","
      << index.y << "," << index.z << ")";
    return o.str();
  }

  void set_fault(const std::string& what) {
    if (fault.empty()) fault = where() + ": " + what;
    for (auto& th : t) {
      th.abort = true;
      if (th.status == kAtBarrier || th.status == kAtWarp) {
        th.status = kRunning;
        ++running;
      }
    }
    at_barrier = 0;
    std::fill(warp_wait.begin(), warp_wait.end(), 0u);
  }

  void reset(int threads) {
    n = threads;
    t.assign(n, EThread{});
    live = running = n;
    at_barrier = 0;
    const int warps = (n + 31) / 32;
    warp_live.assign(warps, 0u);
    warp_wait.assign(warps, 0u);
    for (int i = 0; i < n; ++i) warp_live[i / 32] |= 1u << (i % 32);
    fault.clear();
  }

  // Thread `tid` has recorded a wait (or exited): update the counts, then release what can go on.
  bool changed(int tid) {
    EThread& th = t[tid];
    if (th.status == kAtBarrier) ++at_barrier;
    if (th.status == kAtWarp) warp_wait[tid / 32] |= 1u << (tid % 32);
    if (th.status == kExited) warp_live[tid / 32] &= ~(1u << (tid % 32));
    return progress(tid / 32);
  }


  // Releases every barrier and warp operation that can complete; reports broken rules and
  // deadlocks. Returns whether any thread was released.
  // Only warp `w` (that of the thread that changed) can have become ready.
  bool progress(int w) {
    bool released = false;
    if (!fault.empty()) return false;
    // __syncthreads: every live thread waits there.
    if (live > 0) {
      const int at = at_barrier;
      if (at == live) {
        const EThread* first = nullptr;
        for (const auto& th : t)
          if (th.status == kAtBarrier) {
            if (!first) first = &th;
            if (th.line != first->line || std::strcmp(th.file, first->file) != 0) {
              set_fault("divergent __syncthreads(): threads wait at " + site(first->file, first->line) + " and at " +
                        site(th.file, th.line));
              return true;
            }
          }
        for (auto& th : t)
          if (th.status == kAtBarrier) th.status = kRunning;
        running += at;
        at_barrier = 0;
        released = true;
      }
    }
    // Warp operations: each completes when every live lane of its mask has reached it.
    if (w >= 0) {
      const unsigned live_mask = warp_live[w];
      for (int l = 0; l < 32; ++l) {
        const int tid = 32 * w + l;
        if (!(warp_wait[w] >> l & 1u)) continue;
        const EThread& me = t[tid];
        const unsigned need = me.mask & live_mask;
        if (need & ~warp_wait[w]) continue;  // a lane of the mask has not arrived yet
        for (int k = 0; k < 32; ++k) {
          if (!(need >> k & 1u)) continue;
          const EThread& o = t[32 * w + k];
          if (o.mask != me.mask || o.op != me.op || o.line != me.line || std::strcmp(o.file, me.file) != 0) {
            std::ostringstream msg;
            msg << "divergent warp operation in warp " << w << ": lane " << l << " is at " << op_name(me.op) << "(mask 0x"
                << std::hex << me.mask << ") at " << site(me.file, me.line) << ", lane " << std::dec << k << " at "
                << op_name(o.op) << "(mask 0x" << std::hex << o.mask << ") at " << site(o.file, o.line);
            set_fault(msg.str());
            return true;
          }
        }
        unsigned ballot = 0;
        for (int k = 0; k < 32; ++k)
          if ((need >> k & 1u) && t[32 * w + k].value) ballot |= 1u << k;
        for (int k = 0; k < 32; ++k) {
          if (!(need >> k & 1u)) continue;
          EThread& o = t[32 * w + k];
          if (o.op == kSyncWarp) {
            o.result = 0;
          } else if (o.op == kBallot) {
            o.result = ballot;
          } else {
            const int width = o.width;
            const int base = k - k % width;
            int src = k;
            switch (o.op) {
              case kShflIdx: src = base + ((o.arg % width) + width) % width; break;
              case kShflXor: src = k ^ o.arg; if (src < base || src >= base + width) src = k; break;
              case kShflUp: src = k - o.arg; if (src < base) src = k; break;
              case kShflDown: src = k + o.arg; if (src >= base + width) src = k; break;
              default: break;
            }
            if (src < 0 || src >= 32 || !(need >> src & 1u)) {
              std::ostringstream msg;
              msg << op_name(o.op) << " at " << site(o.file, o.line) << ": lane " << k << " of warp " << w
                  << " reads lane " << src << ", which does not take part (mask 0x" << std::hex << o.mask
                  << ", live lanes 0x" << live_mask << "): the value is undefined";
              set_fault(msg.str());
              return true;
            }
            o.result = t[32 * w + src].value;
          }
          o.status = kRunning;
          ++running;
        }
        warp_wait[w] &= ~need;
        released = true;
      }
    }
    if (!released && running == 0 && live > 0) {
      std::ostringstream msg;
      msg << "deadlock: every live thread waits and none can go on:";
      // One line per place where threads wait: how many, the first few, and where.
      std::map<std::string, std::vector<int>> places;
      for (int i = 0; i < n; ++i) {
        const EThread& th = t[i];
        std::ostringstream p;
        if (th.status == kAtBarrier) {
          p << "__syncthreads() at " << site(th.file, th.line);
        } else if (th.status == kAtWarp) {
          p << op_name(th.op) << "(mask 0x" << std::hex << th.mask << std::dec << ") at " << site(th.file, th.line);
        } else {
          continue;
        }
        places[p.str()].push_back(i);
      }
      for (const auto& [where, ids] : places) {
        msg << " " << ids.size() << " thread(s) (" << ids.front();
        for (size_t k = 1; k < ids.size() && k < 4; ++k) msg << ", " << ids[k];
        msg << (ids.size() > 4 ? ", ..." : "") << ") wait at " << where << ";";
      }
      msg << " (" << live << " live threads; exited threads drop out of barriers)";
      set_fault(msg.str());
      return true;
    }
    return released;
  }
};

Block* g_block = nullptr;           // the block being run (one at a time)
thread_local int t_tid = -1;        // the emulated thread this OS thread (or fiber) is running

// ------------------------------------------------------------------ fibers
// A hand-written x86-64 context switch (callee-saved registers, MXCSR and the x87 control word),
// about 50 times faster than swapcontext, which makes a system call per switch.
#if !defined(__x86_64__)
#error "the CUDA emulation's fibers are written for x86-64"
#endif
extern "C" void rgf_emu_switch(void** save_sp, void* new_sp);
__asm__(
    ".text\n"
    ".globl rgf_emu_switch\n"
    ".hidden rgf_emu_switch\n"
    ".type rgf_emu_switch,@function\n"
    "rgf_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $16, %rsp\n  stmxcsr 8(%rsp)\n  fnstcw (%rsp)\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  ldmxcsr 8(%rsp)\n  fldcw (%rsp)\n  addq $16, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size rgf_emu_switch, .-rgf_emu_switch\n");

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define RGF_EMU_ASAN 1
#endif

struct FiberRunner {
  void* scheduler_sp = nullptr;
  const void* scheduler_bottom = nullptr;
  size_t scheduler_size = 0;
  std::vector<void*> sp;
  std::vector<void*> stacks;
  std::vector<char> done;

  ~FiberRunner() {
    for (void* s : stacks)
      if (s) munmap(s, kFiberStack);
  }

  static FiberRunner* instance() {
    static FiberRunner r;
    return &r;
  }

  // Switches from the current context (saved in *save) to `to`, whose stack is [bottom, bottom + size).
  static void jump(void** save, void* to, const void* bottom, size_t size, bool dying) {
#if RGF_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, bottom, size);
    rgf_emu_switch(save, to);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void)bottom, (void)size, (void)dying;
    rgf_emu_switch(save, to);
#endif
  }

  [[noreturn]] static void entry() {
    FiberRunner& r = *instance();
#if RGF_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &r.scheduler_bottom, &r.scheduler_size);
#endif
    Block& b = *g_block;
    const int tid = t_tid;
    try {
      b.body(b.ctx);
    } catch (const KernelAbort&) {
    }
    b.t[tid].status = kExited;
    --b.live;
    --b.running;
    b.changed(tid);
    r.done[tid] = 1;
    void* dead = nullptr;
    jump(&dead, r.scheduler_sp, r.scheduler_bottom, r.scheduler_size, true);
    __builtin_unreachable();
  }

  void start(int tid) {
    // Initial frame, as rgf_emu_switch leaves one: control words, six registers, then the
    // "return address" entry(), entered with rsp = 8 mod 16 as after a call.
    auto* top = reinterpret_cast<uint64_t*>(static_cast<char*>(stacks[tid]) + kFiberStack);
#if RGF_EMU_ASAN
    // entry() never returns (it switches away), so its frame's redzones stay poisoned: clear them.
    ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<char*>(top) - 16384, 16384);
#endif
    uint64_t* p = top - 1;
    *p = 0;                                              // entry()'s own return address: none
    *--p = reinterpret_cast<uint64_t>(&FiberRunner::entry);
    for (int i = 0; i < 6; ++i) *--p = 0;                // rbp rbx r12 r13 r14 r15
    p -= 2;
    uint32_t mxcsr;
    uint16_t fpcw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpcw));
    std::memcpy(reinterpret_cast<char*>(p) + 8, &mxcsr, 4);
    std::memcpy(p, &fpcw, 2);
    sp[tid] = p;
  }

  void run(Block& b, std::mt19937_64* order_rng) {
    const int n = b.n;
    if (static_cast<int>(sp.size()) < n) {
      sp.resize(n);
      stacks.resize(n, nullptr);
    }
    done.assign(n, 0);
    for (int i = 0; i < n; ++i) {
      if (!stacks[i]) {
        void* m = mmap(nullptr, kFiberStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
          std::fprintf(stderr, "cuda emulation: cannot map a fiber stack\n");
          std::abort();
        }
        stacks[i] = m;
      }
      start(i);
    }
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    while (b.live > 0) {
      if (order_rng) std::shuffle(order.begin(), order.end(), *order_rng);
      bool ran = false;
      for (int tid : order) {
        if (done[tid] || b.t[tid].status != kRunning) continue;
        resume(b, tid);
        ran = true;
      }
      if (!ran) {  // cannot happen: progress() reports a deadlock and releases everyone
        std::fprintf(stderr, "cuda emulation: scheduler found no runnable thread\n");
        std::abort();
      }
    }
  }

  void resume(Block& b, int tid) {
    t_tid = tid;
    current.thread = b.thread_index(tid);
    jump(&scheduler_sp, sp[tid], stacks[tid], kFiberStack, false);
  }

  // Called by a fiber that waits: back to the scheduler until released.
  void wait(Block& b, int tid) {
    while (b.t[tid].status != kRunning) jump(&sp[tid], scheduler_sp, scheduler_bottom, scheduler_size, false);
  }
};

// ------------------------------------------------------------------ OS threads
void run_threads(Block& b) {
  std::vector<std::thread> threads;
  threads.reserve(b.n);
  const ThreadIndex base = current;
  for (int i = 0; i < b.n; ++i)
    threads.emplace_back([&b, i, base] {
      t_tid = i;
      current = base;
      current.thread = b.thread_index(i);
      try {
        b.body(b.ctx);
      } catch (const KernelAbort&) {
      }
      std::lock_guard<std::mutex> lock(b.mutex);
      b.t[i].status = kExited;
      --b.live;
      --b.running;
      if (b.changed(i) || !b.fault.empty()) b.cv.notify_all();
    });
  for (auto& th : threads) th.join();
}

// A thread reaches a synchronisation point: record it, release what can go on, wait.
template <class Record>
void arrive(Record record) {
  Block& b = *g_block;
  const int tid = t_tid;
  if (g_options.mode == 1) {
    std::unique_lock<std::mutex> lock(b.mutex);
    if (b.t[tid].abort) throw KernelAbort{};  // the block has faulted: unwind at the next sync point
    record(b, b.t[tid]);
    if (b.t[tid].status != kRunning) --b.running;
    if (b.changed(tid) || !b.fault.empty()) b.cv.notify_all();
    b.cv.wait(lock, [&] { return b.t[tid].status == kRunning; });
    if (b.t[tid].abort) throw KernelAbort{};
    return;
  }
  if (b.t[tid].abort) throw KernelAbort{};
  record(b, b.t[tid]);
  if (b.t[tid].status != kRunning) --b.running;
  b.changed(tid);
  FiberRunner::instance()->wait(b, tid);
  if (b.t[tid].abort) throw KernelAbort{};
}

void run_block(Block& b, std::mt19937_64* thread_rng) {
  b.reset(b.n);
  g_block = &b;
  current.block = uint3{b.index.x, b.index.y, b.index.z};
  current.block_dim = b.dim;
  current.grid_dim = b.grid;
  if (g_options.mode == 1)
    run_threads(b);
  else
    FiberRunner::instance()->run(b, thread_rng);
  g_block = nullptr;
}

std::map<void*, uint64_t> g_shared_filled;  // __shared__ variable -> serial of the block that filled it
size_t g_launch_static_shared = 0;
std::set<void*> g_launch_shared_seen;

}  // namespace

void syncthreads(const char* file, int line) {
  arrive([&](Block&, EThread& me) {
    me.status = kAtBarrier;
    me.file = file;
    me.line = line;
  });
}

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  uint64_t out = 0;
  arrive([&](Block& b, EThread& me) {
    const int lane = t_tid % 32;
    me.file = file;
    me.line = line;
    if (!(mask >> lane & 1u)) {
      std::ostringstream msg;
      msg << op_name(op) << " at " << site(file, line) << ": thread " << t_tid << " (lane " << lane
          << ") calls it with mask 0x" << std::hex << mask << ", which does not include it";
      b.set_fault(msg.str());
      return;
    }
    if (width < 1 || width > 32 || (width & (width - 1))) {
      b.set_fault(std::string(op_name(op)) + " at " + site(file, line) + ": width " + std::to_string(width) +
                  " is not a power of 2 in [1, 32]");
      return;
    }
    me.status = kAtWarp;
    me.op = op;
    me.mask = mask;
    me.value = value;
    me.arg = arg;
    me.width = width;
  });
  out = g_block->t[t_tid].result;
  return out;
}

void shared_region(void* address, size_t bytes, const char* name) {
  Block& b = *g_block;
  std::unique_lock<std::mutex> lock(b.mutex, std::defer_lock);
  if (g_options.mode == 1) lock.lock();
  if (b.t[t_tid].abort) throw KernelAbort{};
  if (g_launch_shared_seen.insert(address).second) {
    g_launch_static_shared += bytes;
    if (g_launch_static_shared > kStaticSharedLimit) {
      b.set_fault("static __shared__ memory of " + std::to_string(g_launch_static_shared) + " bytes (reached at " +
                  std::string(name) + ") exceeds the 48 KiB a kernel may declare");
      if (g_options.mode == 1) b.cv.notify_all();
      throw KernelAbort{};
    }
  }
  uint64_t& filled = g_shared_filled[address];
  if (filled != b.serial) {
    filled = b.serial;
    fill_garbage(address, bytes, g_options.thread_seed ? g_options.thread_seed ^ (b.serial * 0x9E3779B97F4A7C15ull) : 0);
  }
}

void launch(const LaunchSite& s, dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream,
            void (*body)(void*), void* ctx) {
  std::unique_lock<std::mutex> lock(g_mutex);
  if (g_sticky != cudaSuccess) {
    result(g_sticky);
    return;
  }
  const unsigned bd[3] = {block.x, block.y, block.z}, gd[3] = {grid.x, grid.y, grid.z};
  const unsigned long long threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
  for (int i = 0; i < 3; ++i)
    if (bd[i] == 0 || bd[i] > kMaxBlockDim[i] || gd[i] == 0 || gd[i] > kMaxGridDim[i]) {
      result(cudaErrorInvalidConfiguration);
      return;
    }
  if (threads > kMaxThreadsPerBlock) {
    result(cudaErrorInvalidConfiguration);
    return;
  }
  const auto opt = g_max_dynamic_shared.find(s.kernel);
  const size_t dyn_limit = opt != g_max_dynamic_shared.end() ? static_cast<size_t>(opt->second) : kStaticSharedLimit;
  if (dynamic_shared > dyn_limit) {
    result(cudaErrorInvalidValue);
    return;
  }
  if (!valid_stream(stream)) {
    result(cudaErrorInvalidResourceHandle);
    return;
  }
  ++g_launches;
  const Options opts = g_options;
  const uint64_t launch_serial = g_launches;
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order;
  std::mt19937_64 block_rng(opts.block_seed ^ (launch_serial * 0xD1B54A32D192ED03ull));
  std::mt19937_64 thread_rng(opts.thread_seed ^ (launch_serial * 0x8CB92BA72F3D8DD7ull));
  if (opts.block_seed) {
    order.resize(blocks);
    for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), block_rng);
  }
  g_launch_static_shared = dynamic_shared;
  g_launch_shared_seen.clear();
  Block b;
  b.launch = &s;
  b.body = body;
  b.ctx = ctx;
  b.grid = grid;
  b.dim = block;
  b.n = static_cast<int>(threads);
  const ThreadIndex saved = current;
  lock.unlock();  // kernels may not call the runtime, but other host threads may
  std::string fault;
  for (uint64_t k = 0; k < blocks && fault.empty(); ++k) {
    const uint64_t id = opts.block_seed ? order[k] : k;
    b.index = dim3(static_cast<unsigned>(id % grid.x), static_cast<unsigned>((id / grid.x) % grid.y),
                   static_cast<unsigned>(id / (static_cast<uint64_t>(grid.x) * grid.y)));
    {
      std::lock_guard<std::mutex> l(g_mutex);
      b.serial = ++g_blocks;
    }
    run_block(b, opts.thread_seed ? &thread_rng : nullptr);
    fault = b.fault;
  }
  current = saved;
  lock.lock();
  if (!fault.empty()) {
    g_report += fault + "\n";
    if (g_sticky == cudaSuccess) g_sticky_text = fault;
    g_sticky = cudaErrorLaunchFailure;
  }
}

}  // namespace rgf_emu

using namespace rgf_emu;

// ------------------------------------------------------------------ runtime API
cudaError_t cudaGetLastError() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_sticky != cudaSuccess) return g_sticky;
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_sticky != cudaSuccess ? g_sticky : t_last_error;
}

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
#define RGF_EMU_NAME(e) \
  case e: return #e;
    RGF_EMU_NAME(cudaSuccess)
    RGF_EMU_NAME(cudaErrorInvalidValue)
    RGF_EMU_NAME(cudaErrorMemoryAllocation)
    RGF_EMU_NAME(cudaErrorInitializationError)
    RGF_EMU_NAME(cudaErrorInvalidConfiguration)
    RGF_EMU_NAME(cudaErrorInvalidDevicePointer)
    RGF_EMU_NAME(cudaErrorInvalidMemcpyDirection)
    RGF_EMU_NAME(cudaErrorInvalidDeviceFunction)
    RGF_EMU_NAME(cudaErrorNoDevice)
    RGF_EMU_NAME(cudaErrorInvalidDevice)
    RGF_EMU_NAME(cudaErrorInvalidResourceHandle)
    RGF_EMU_NAME(cudaErrorNotReady)
    RGF_EMU_NAME(cudaErrorIllegalAddress)
    RGF_EMU_NAME(cudaErrorLaunchOutOfResources)
    RGF_EMU_NAME(cudaErrorAssert)
    RGF_EMU_NAME(cudaErrorLaunchFailure)
#undef RGF_EMU_NAME
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorLaunchFailure: {
      // The emulation says which rule was broken, where (the real runtime cannot).
      static thread_local std::string text;
      std::lock_guard<std::mutex> lock(g_mutex);
      text = "unspecified launch failure";
      if (!g_sticky_text.empty()) text += " [emulation: " + g_sticky_text + "]";
      return text.c_str();
    }
  }
  return "unknown error";
}

cudaError_t cudaGetDeviceCount(int* count) {
  RGF_EMU_API_BEGIN;
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  RGF_EMU_API_BEGIN;
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  RGF_EMU_API_BEGIN;
  return result(device == 0 ? cudaSuccess : cudaErrorInvalidDevice);
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = 13000;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
  *version = 13000;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  RGF_EMU_API_BEGIN;
  if (device != 0) return result(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = kMaxBlockDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = kMaxBlockDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = kMaxBlockDim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = static_cast<int>(kMaxGridDim[0]); break;
    case cudaDevAttrMaxGridDimY: *value = kMaxGridDim[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = kMaxGridDim[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = kStaticSharedLimit; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = g_options.sm_count; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = kSharedPerSM; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = kOptinSharedLimit; break;
    default: return result(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  RGF_EMU_API_BEGIN;
  if (device != 0) return result(cudaErrorInvalidDevice);
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "CUDA emulation (sm_90 limits, %d SMs)", g_options.sm_count);
  p->totalGlobalMem = size_t{80} << 30;
  p->sharedMemPerBlock = kStaticSharedLimit;
  p->sharedMemPerBlockOptin = kOptinSharedLimit;
  p->sharedMemPerMultiprocessor = kSharedPerSM;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = kMaxThreadsPerBlock;
  for (int i = 0; i < 3; ++i) {
    p->maxThreadsDim[i] = kMaxBlockDim[i];
    p->maxGridSize[i] = static_cast<int>(kMaxGridDim[i]);
  }
  p->multiProcessorCount = g_options.sm_count;
  p->major = 9;
  p->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  RGF_EMU_API_BEGIN;
  return cudaSuccess;  // every operation ran when it was queued
}

// Device memory is host memory (malloc, so AddressSanitizer sees overruns and use after free),
// filled with garbage as fresh device memory is.
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  RGF_EMU_API_BEGIN;
  void* p = std::malloc(bytes ? bytes : 1);
  if (!p) return result(cudaErrorMemoryAllocation);
  fill_garbage(p, bytes, g_options.thread_seed);
  g_allocations[p] = bytes;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  RGF_EMU_API_BEGIN;
  if (!ptr) return cudaSuccess;
  auto it = g_allocations.find(ptr);
  if (it == g_allocations.end()) return result(cudaErrorInvalidValue);
  g_allocations.erase(it);
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!valid_stream(stream)) return result(cudaErrorInvalidResourceHandle);
  }
  return cudaMalloc(ptr, bytes);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!valid_stream(stream)) return result(cudaErrorInvalidResourceHandle);
  }
  return cudaFree(ptr);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  RGF_EMU_API_BEGIN;
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return result(cudaErrorInvalidMemcpyDirection);
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!valid_stream(stream)) return result(cudaErrorInvalidResourceHandle);
  }
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  RGF_EMU_API_BEGIN;
  if (bytes) std::memset(ptr, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!valid_stream(stream)) return result(cudaErrorInvalidResourceHandle);
  }
  return cudaMemset(ptr, value, bytes);
}

// Streams and events: every operation runs when it is queued, so stream order always holds and
// waiting never waits.
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  RGF_EMU_API_BEGIN;
  auto* s = reinterpret_cast<cudaStream_t>(new char[1]);
  g_streams.insert(s);
  *stream = s;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  RGF_EMU_API_BEGIN;
  if (!g_streams.erase(stream)) return result(cudaErrorInvalidResourceHandle);
  delete[] reinterpret_cast<char*>(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  RGF_EMU_API_BEGIN;
  return result(valid_stream(stream) ? cudaSuccess : cudaErrorInvalidResourceHandle);
}
cudaError_t cudaStreamQuery(cudaStream_t stream) { return cudaStreamSynchronize(stream); }
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  RGF_EMU_API_BEGIN;
  if (!valid_stream(stream) || !g_events.count(event)) return result(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  RGF_EMU_API_BEGIN;
  auto* e = reinterpret_cast<cudaEvent_t>(new char[1]);
  g_events.insert(e);
  *event = e;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  RGF_EMU_API_BEGIN;
  if (!g_events.erase(event)) return result(cudaErrorInvalidResourceHandle);
  g_event_time.erase(event);
  delete[] reinterpret_cast<char*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  RGF_EMU_API_BEGIN;
  if (!g_events.count(event) || !valid_stream(stream)) return result(cudaErrorInvalidResourceHandle);
  g_event_time[event] = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  RGF_EMU_API_BEGIN;
  return result(g_events.count(event) ? cudaSuccess : cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventQuery(cudaEvent_t event) { return cudaEventSynchronize(event); }
// Host time between the two records: the emulation's, nothing like a GPU's.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  RGF_EMU_API_BEGIN;
  if (!g_events.count(start) || !g_events.count(end)) return result(cudaErrorInvalidResourceHandle);
  if (!g_event_time.count(start) || !g_event_time.count(end)) return result(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(g_event_time[end] - g_event_time[start]).count();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetMemPool(cudaMemPool_t* pool, int device) {
  RGF_EMU_API_BEGIN;
  if (device != 0) return result(cudaErrorInvalidDevice);
  *pool = kPool;
  return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  RGF_EMU_API_BEGIN;
  if (pool != kPool || attr != cudaMemPoolAttrReleaseThreshold) return result(cudaErrorInvalidValue);
  *static_cast<uint64_t*>(value) = g_release_threshold;
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  RGF_EMU_API_BEGIN;
  if (pool != kPool || attr != cudaMemPoolAttrReleaseThreshold) return result(cudaErrorInvalidValue);
  g_release_threshold = *static_cast<uint64_t*>(value);
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  RGF_EMU_API_BEGIN;
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > kOptinSharedLimit)
    return result(cudaErrorInvalidValue);
  g_max_dynamic_shared[func] = value;
  return cudaSuccess;
}

// ------------------------------------------------------------------ control
extern "C" {
void rgf_emu_configure(int mode, uint64_t block_seed, uint64_t thread_seed, int sm_count) {
  std::lock_guard<std::mutex> lock(g_mutex);
#if defined(__SANITIZE_THREAD__)
  mode = 1;  // ThreadSanitizer cannot follow fibers: OS threads only
#endif
  g_options.mode = mode;
  g_options.block_seed = block_seed;
  g_options.thread_seed = thread_seed;
  g_options.sm_count = sm_count;
}
size_t rgf_emu_report(char* out, size_t size) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (out && size) {
    const size_t k = std::min(size - 1, g_report.size());
    std::memcpy(out, g_report.data(), k);
    out[k] = '\0';
  }
  return g_report.size();
}
void rgf_emu_reset() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_report.clear();
  g_sticky_text.clear();
  g_sticky = cudaSuccess;
  t_last_error = cudaSuccess;
  g_max_dynamic_shared.clear();
}
uint64_t rgf_emu_launches() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_launches;
}
uint64_t rgf_emu_blocks() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_blocks;
}
}
