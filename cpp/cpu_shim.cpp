// A c10::Allocator that sends PyTorch's CPU tensors through model_opt's runtime, so real training
// steps can be recorded, planned and replayed on a machine without a GPU.
//
// Built on first use by model_opt.install_cpu_allocator() with torch.utils.cpp_extension.load(). It
// does not link against the extension library: Python passes the addresses of model_opt_host_alloc,
// model_opt_host_free and model_opt_last_error from the already-loaded model_opt._native, so there is
// one copy of the runtime in the process.
#include <torch/extension.h>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdint>
#include <string>

namespace {

using AllocFn = void* (*)(size_t);
using FreeFn = void (*)(void*);
using LastErrorFn = size_t (*)(char*, size_t);

std::atomic<AllocFn> g_alloc{nullptr};
std::atomic<FreeFn> g_free{nullptr};
std::atomic<LastErrorFn> g_last_error{nullptr};

void model_opt_delete(void* ptr) {
  if (ptr != nullptr) {
    g_free.load(std::memory_order_relaxed)(ptr);
  }
}

struct ModelOptCPUAllocator final : public c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    void* ptr = nullptr;
    if (n != 0) {
      ptr = g_alloc.load(std::memory_order_relaxed)(n);
      if (ptr == nullptr) {
        char buf[1024] = {0};
        g_last_error.load(std::memory_order_relaxed)(buf, sizeof(buf));
        TORCH_CHECK_WITH(OutOfMemoryError, false, "model_opt could not allocate ", n, " bytes: ", buf);
      }
    }
    return {ptr, ptr, &model_opt_delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &model_opt_delete;
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// Never destroyed: tensors allocated through it may outlive any static destructor order.
ModelOptCPUAllocator* g_allocator = new ModelOptCPUAllocator();

bool install(int64_t alloc_fn, int64_t free_fn, int64_t last_error_fn) {
  TORCH_CHECK(alloc_fn != 0 && free_fn != 0 && last_error_fn != 0, "model_opt: null function address");
  if (c10::GetCPUAllocator() == g_allocator) {
    return false;  // already installed
  }
  g_alloc.store(reinterpret_cast<AllocFn>(alloc_fn));
  g_free.store(reinterpret_cast<FreeFn>(free_fn));
  g_last_error.store(reinterpret_cast<LastErrorFn>(last_error_fn));
  // Highest priority, so a later SetCPUAllocator with the default priority cannot silently take over.
  c10::SetCPUAllocator(g_allocator, /*priority=*/UINT8_MAX);
  return true;
}

bool installed() {
  return c10::GetCPUAllocator() == g_allocator;
}

// Puts PyTorch's default CPU allocator back (benchmarks alternate the two). Tensors keep the deleter
// of the allocator that made them, so mixing is safe.
bool restore_default() {
  if (!installed()) {
    return false;
  }
  c10::SetCPUAllocator(c10::GetDefaultCPUAllocator(), /*priority=*/UINT8_MAX);
  return true;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "model_opt's CPU allocator shim";
  m.def("install", &install, "Route CPU tensor allocations through model_opt (returns False if already installed)");
  m.def("installed", &installed, "Whether model_opt's CPU allocator is the current one");
  m.def("restore_default", &restore_default, "Put PyTorch's default CPU allocator back");
}
