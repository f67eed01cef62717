// model_opt's CUDA allocator front: the two functions PyTorch's CUDAPluggableAllocator calls, in front of
// the runtime's C ABI, so that a request the runtime cannot serve raises PyTorch's error instead of
// handing PyTorch a NULL pointer.
//
// Why: CUDAPluggableAllocator::malloc returns what its alloc function returns, unchecked (torch 2.x), so
// a NULL becomes a tensor with no memory that fails far away. An exception thrown here propagates
// through malloc and the operator that allocated to Python: c10::OutOfMemoryError as
// torch.OutOfMemoryError (which users and cuDNN's workspace retry catch), any other c10::Error as
// RuntimeError. The message starts "CUDA out of memory." as PyTorch's does, for code that matches it.
//
// CUDA graphs: with MODEL_OPT_GRAPH_HOOKS (built against the CUDA runtime headers and libtorch_cuda,
// which PyTorch's CUDA wheels bring), the front also sets the pluggable allocator's pool hooks.
// torch.cuda.graph (and torch.compile's CUDA graphs) call beginAllocateToPool with a stream filter
// before a capture and endAllocateToPool after it; the filter is a std::function, which cannot cross
// into Rust, so the front keeps the captures under way and sends each request a capture's filter
// selects to the runtime's private pool of that graph (src/runtime/graph_pools.rs). Without the
// headers the front is built without hooks and the runtime refuses requests of capturing streams.
//
// Built on first use by model_opt.allocator() with torch.utils.cpp_extension.load(), like the CPU shim;
// without the hooks it needs no CUDA header (a cudaStream_t is passed as void*). It does not link against the extension
// library: Python passes the addresses of model_opt_try_alloc, model_opt_free and model_opt_last_error
// from the already-loaded model_opt._native, so there is one copy of the runtime in the process.
#include <torch/extension.h>

#include <c10/util/Exception.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#ifdef MODEL_OPT_GRAPH_HOOKS
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>
#endif

namespace {

using TryAllocFn = int (*)(size_t, int, void*, void**);
using FreeFn = void (*)(void*, size_t, int, void*);
using LastErrorFn = size_t (*)(char*, size_t);

// model_opt_try_alloc's statuses (cpp/model_opt.h).
constexpr int kAllocOk = 0;
constexpr int kAllocOutOfMemory = 1;

std::atomic<TryAllocFn> g_try_alloc{nullptr};
std::atomic<FreeFn> g_free{nullptr};
std::atomic<LastErrorFn> g_last_error{nullptr};

// The calling thread's last runtime error (the runtime keeps it per thread, like errno).
std::string last_error() {
  LastErrorFn fn = g_last_error.load(std::memory_order_acquire);
  std::string msg(1024, '\0');
  size_t n = fn(msg.data(), msg.size());
  if (n >= msg.size()) {  // longer than the first guess: read it whole
    msg.assign(n + 1, '\0');
    n = fn(msg.data(), msg.size());
  }
  msg.resize(n < msg.size() ? n : msg.size() - 1);
  return msg;
}

#ifdef MODEL_OPT_GRAPH_HOOKS
using GraphBeginFn = void (*)(int, uint64_t, uint64_t);
using GraphStatusFn = int (*)(int, uint64_t, uint64_t);
using TryAllocForGraphFn = int (*)(size_t, int, void*, uint64_t, uint64_t, void**);

// One capture under way: requests its filter selects go to its pool.
struct Capture {
  int device;
  c10::cuda::MempoolId_t pool;
  std::function<bool(cudaStream_t)> filter;
};

std::mutex g_captures_mutex;
std::vector<Capture> g_captures;  // oldest first; guarded by g_captures_mutex
std::atomic<bool> g_capturing{false};  // g_captures is not empty: the one check a request pays
std::atomic<GraphBeginFn> g_graph_begin{nullptr};
std::atomic<GraphStatusFn> g_graph_end{nullptr};
std::atomic<GraphStatusFn> g_graph_release{nullptr};
std::atomic<TryAllocForGraphFn> g_try_alloc_for_graph{nullptr};

// The pool of the newest capture on `device` whose filter takes `stream`, as PyTorch's own allocator
// picks it; false when none does.
bool pool_of(int device, void* stream, c10::cuda::MempoolId_t* pool) {
  std::lock_guard<std::mutex> guard(g_captures_mutex);
  for (auto it = g_captures.rbegin(); it != g_captures.rend(); ++it) {
    if (it->device == device && it->filter(static_cast<cudaStream_t>(stream))) {
      *pool = it->pool;
      return true;
    }
  }
  return false;
}

void begin_allocate_to_pool(int device, c10::cuda::MempoolId_t pool, std::function<bool(cudaStream_t)> filter) {
  {
    std::lock_guard<std::mutex> guard(g_captures_mutex);
    g_captures.push_back(Capture{device, pool, std::move(filter)});
    g_capturing.store(true, std::memory_order_release);
  }
  g_graph_begin.load(std::memory_order_acquire)(device, pool.first, pool.second);
}

void end_allocate_to_pool(int device, c10::cuda::MempoolId_t pool) {
  {
    std::lock_guard<std::mutex> guard(g_captures_mutex);
    for (auto it = g_captures.rbegin(); it != g_captures.rend(); ++it) {
      if (it->device == device && it->pool == pool) {
        g_captures.erase(std::next(it).base());
        break;
      }
    }
    g_capturing.store(!g_captures.empty(), std::memory_order_release);
  }
  // A capture the runtime did not know is recorded as its last error; nothing to raise here.
  (void)g_graph_end.load(std::memory_order_acquire)(device, pool.first, pool.second);
}

void release_pool(int device, c10::cuda::MempoolId_t pool) {
  (void)g_graph_release.load(std::memory_order_acquire)(device, pool.first, pool.second);
}

// Sets the pool hooks on the pluggable allocator PyTorch uses (model_opt.allocator()'s).
bool install_graph_hooks(
    const std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator>& allocator,
    int64_t begin_fn,
    int64_t end_fn,
    int64_t release_fn,
    int64_t try_alloc_for_graph_fn) {
  TORCH_CHECK(
      begin_fn != 0 && end_fn != 0 && release_fn != 0 && try_alloc_for_graph_fn != 0,
      "model_opt: null function address");
  auto* pluggable = dynamic_cast<torch::cuda::CUDAPluggableAllocator::CUDAPluggableAllocator*>(allocator.get());
  TORCH_CHECK(pluggable != nullptr, "model_opt: the allocator is not a CUDAPluggableAllocator");
  g_graph_begin.store(reinterpret_cast<GraphBeginFn>(begin_fn), std::memory_order_release);
  g_graph_end.store(reinterpret_cast<GraphStatusFn>(end_fn), std::memory_order_release);
  g_graph_release.store(reinterpret_cast<GraphStatusFn>(release_fn), std::memory_order_release);
  g_try_alloc_for_graph.store(reinterpret_cast<TryAllocForGraphFn>(try_alloc_for_graph_fn), std::memory_order_release);
  pluggable->set_begin_allocate_to_pool(begin_allocate_to_pool);
  pluggable->set_end_allocate_to_pool_fn(end_allocate_to_pool);
  pluggable->set_release_pool(release_pool);
  return true;
}
#endif  // MODEL_OPT_GRAPH_HOOKS

bool install(int64_t try_alloc_fn, int64_t free_fn, int64_t last_error_fn) {
  TORCH_CHECK(try_alloc_fn != 0 && free_fn != 0 && last_error_fn != 0, "model_opt: null function address");
  bool first = g_try_alloc.load() == nullptr;
  g_last_error.store(reinterpret_cast<LastErrorFn>(last_error_fn), std::memory_order_release);
  g_free.store(reinterpret_cast<FreeFn>(free_fn), std::memory_order_release);
  g_try_alloc.store(reinterpret_cast<TryAllocFn>(try_alloc_fn), std::memory_order_release);
  return first;
}

}  // namespace

// The functions CUDAPluggableAllocator loads by name, with its signatures (cudaStream_t as void*).
extern "C" {

__attribute__((visibility("default"))) void* model_opt_cuda_alloc(size_t size, int device, void* stream) {
  TryAllocFn try_alloc = g_try_alloc.load(std::memory_order_acquire);
  TORCH_CHECK(
      try_alloc != nullptr,
      "model_opt's CUDA front was loaded but not installed: use "
      "torch.cuda.memory.change_current_allocator(model_opt.allocator())");
  void* ptr = nullptr;
  int status = 0;
#ifdef MODEL_OPT_GRAPH_HOOKS
  c10::cuda::MempoolId_t pool;
  if (g_capturing.load(std::memory_order_acquire) && pool_of(device, stream, &pool)) {
    status = g_try_alloc_for_graph.load(std::memory_order_acquire)(size, device, stream, pool.first, pool.second, &ptr);
  } else {
    status = try_alloc(size, device, stream, &ptr);
  }
#else
  status = try_alloc(size, device, stream, &ptr);
#endif
  if (status == kAllocOk) {
    return ptr;  // NULL only for size 0, which PyTorch expects
  }
  std::string reason = last_error();
  TORCH_CHECK_WITH(
      OutOfMemoryError,
      status != kAllocOutOfMemory,
      "CUDA out of memory. Tried to allocate ",
      size,
      " bytes on CUDA device ",
      device,
      " through model_opt: ",
      reason);
  TORCH_CHECK(false, "model_opt could not allocate ", size, " bytes on CUDA device ", device, ": ", reason);
}

// Never throws: PyTorch frees from deleters, where an exception would terminate the process. A failed
// free is recorded by the runtime (model_opt.last_error()).
__attribute__((visibility("default"))) void model_opt_cuda_free(void* ptr, size_t size, int device, void* stream) noexcept {
  FreeFn free_fn = g_free.load(std::memory_order_acquire);
  if (free_fn != nullptr && ptr != nullptr) {
    free_fn(ptr, size, device, stream);
  }
}

}  // extern "C"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "model_opt's CUDA allocator front (raises PyTorch's errors for refused requests)";
  m.def("install", &install, "Point the front at the runtime's C functions (True the first time)");
#ifdef MODEL_OPT_GRAPH_HOOKS
  m.def("install_graph_hooks", &install_graph_hooks, "Set the pluggable allocator's CUDA graph pool hooks");
#endif
}
