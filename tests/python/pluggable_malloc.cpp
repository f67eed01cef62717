// For tests/python/test_cuda_front.py: calls PyTorch's own CUDAPluggableAllocator::malloc and raw_delete
// on the allocator model_opt.allocator() built, as PyTorch's CUDA tensor allocation does, without the
// device query before it (there is no GPU here). So the test sees what a user would: whether an error
// thrown by model_opt's front reaches Python, and as which exception.
#include <torch/extension.h>

#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include <cstdint>
#include <memory>

namespace {

using Pluggable = torch::cuda::CUDAPluggableAllocator::CUDAPluggableAllocator;

Pluggable* pluggable(const std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator>& allocator) {
  auto* p = dynamic_cast<Pluggable*>(allocator.get());
  TORCH_CHECK(p != nullptr, "not a CUDAPluggableAllocator");
  return p;
}

int64_t malloc_(
    const std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator>& allocator,
    size_t size,
    int device,
    int64_t stream) {
  void* ptr = pluggable(allocator)->malloc(
      size, static_cast<c10::DeviceIndex>(device), reinterpret_cast<cudaStream_t>(stream));
  return reinterpret_cast<int64_t>(ptr);
}

void free_(const std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator>& allocator, int64_t ptr) {
  pluggable(allocator)->raw_delete(reinterpret_cast<void*>(ptr));
}

// What torch.cuda.graph's capture does around a capture: beginAllocateToPool with a filter that takes
// the capturing stream (here: the stream named), endAllocateToPool, and releasePool when the graph goes.
void begin_pool(
    const std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator>& allocator,
    int device,
    uint64_t pool_a,
    uint64_t pool_b,
    int64_t stream) {
  auto capturing = reinterpret_cast<cudaStream_t>(stream);
  pluggable(allocator)->beginAllocateToPool(
      static_cast<c10::DeviceIndex>(device), {pool_a, pool_b}, [capturing](cudaStream_t s) { return s == capturing; });
}

void end_pool(
    const std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator>& allocator,
    int device,
    uint64_t pool_a,
    uint64_t pool_b) {
  pluggable(allocator)->endAllocateToPool(static_cast<c10::DeviceIndex>(device), {pool_a, pool_b});
}

void release_pool(
    const std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator>& allocator,
    int device,
    uint64_t pool_a,
    uint64_t pool_b) {
  pluggable(allocator)->releasePool(static_cast<c10::DeviceIndex>(device), {pool_a, pool_b});
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("malloc", &malloc_, "CUDAPluggableAllocator::malloc(size, device, stream)");
  m.def("free", &free_, "CUDAPluggableAllocator::raw_delete(ptr)");
  m.def("begin_pool", &begin_pool, "CUDAPluggableAllocator::beginAllocateToPool(device, (a, b), stream filter)");
  m.def("end_pool", &end_pool, "CUDAPluggableAllocator::endAllocateToPool(device, (a, b))");
  m.def("release_pool", &release_pool, "CUDAPluggableAllocator::releasePool(device, (a, b))");
}
