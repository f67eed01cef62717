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
// Built on first use by model_opt.allocator() with torch.utils.cpp_extension.load(), like the CPU shim,
// and needs no CUDA header (a cudaStream_t is passed as void*). It does not link against the extension
// library: Python passes the addresses of model_opt_try_alloc, model_opt_free and model_opt_last_error
// from the already-loaded model_opt._native, so there is one copy of the runtime in the process.
#include <torch/extension.h>

#include <c10/util/Exception.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

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
  int status = try_alloc(size, device, stream, &ptr);
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
}
