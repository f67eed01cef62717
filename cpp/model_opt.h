/* model_opt's C ABI, exported by the extension library model_opt/_native*.so.
 *
 * model_opt_alloc / model_opt_free have the signatures PyTorch's CUDAPluggableAllocator calls
 * (cudaStream_t is passed as void*). The hooks match CUDAPluggableAllocator's set_*_fn setters.
 * model_opt_host_* serve PyTorch's CPU tensors through the same runtime (cpp/cpu_shim.cpp).
 *
 * No function lets a panic escape. Failures are values: model_opt_alloc returns NULL when the device
 * is out of memory, has no driver, or the stream is capturing a CUDA graph; control functions return
 * non-zero. The message is available from model_opt_last_error. PyTorch does not check a pluggable
 * allocator's NULL, so model_opt.allocator() hands PyTorch the CUDA front (cpp/cuda_front.cpp), which
 * calls model_opt_try_alloc and throws PyTorch's errors instead. */
#ifndef MODEL_OPT_H
#define MODEL_OPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Allocator hooks (CUDAPluggableAllocator). Size 0 returns NULL; so does a size no device can hold
 * (above PTRDIFF_MAX), with an out-of-memory message. record_stream of a pointer that is not live
 * records an error and does nothing. */
void* model_opt_alloc(size_t size, int device, void* stream);
void model_opt_free(void* ptr, size_t size, int device, void* stream);
/* model_opt_alloc with a status: 0 served (*out is the address), 1 out of memory, 2 refused for
 * another reason (no driver, a driver error, a stream capturing a CUDA graph); *out is NULL on
 * failure and the message is the last error. */
#define MODEL_OPT_ALLOC_OK 0
#define MODEL_OPT_ALLOC_OUT_OF_MEMORY 1
#define MODEL_OPT_ALLOC_REFUSED 2
int model_opt_try_alloc(size_t size, int device, void* stream, void** out);
/* CUDA graphs' private pools (PyTorch's beginAllocateToPool / endAllocateToPool / releasePool; a pool
 * is PyTorch's MempoolId_t, the pair (pool_a, pool_b)). Between begin and end, the requests the
 * capture's filter selects go to model_opt_try_alloc_for_graph (statuses as model_opt_try_alloc), memory
 * freed outside graph pools on the device is held for good, and no device memory is given back. A
 * released pool's memory goes back once nothing in it is in use. end and release: 0, or non-zero for
 * a capture or pool the runtime does not know (the reason is the last error). */
void model_opt_graph_capture_begin(int device, uint64_t pool_a, uint64_t pool_b);
int model_opt_graph_capture_end(int device, uint64_t pool_a, uint64_t pool_b);
int model_opt_graph_pool_release(int device, uint64_t pool_a, uint64_t pool_b);
int model_opt_try_alloc_for_graph(size_t size, int device, void* stream, uint64_t pool_a, uint64_t pool_b,
                                  void** out);
void model_opt_init(int device_count);                          /* set_init_fn */
void model_opt_empty_cache(void);                               /* set_reset_fn */
/* set_memory_fraction_fn: past the fraction a request is out of memory (a bad fraction, or a device
 * that does not report its size, changes nothing; the reason goes to the last error) */
void model_opt_set_memory_fraction(double fraction, int device);
/* At most `limit` bytes from `device` (-1: host memory); a negative limit lifts it. 0, or -1 after an
 * internal error with the reason as the last error. */
int model_opt_set_memory_limit(int device, int64_t limit);
void model_opt_record_stream(void* ptr, void* stream);          /* set_record_stream_fn */

/* Host memory for the CPU shim (device -1 of the runtime). */
void* model_opt_host_alloc(size_t size);
void model_opt_host_free(void* ptr);

/* Control: 0 on success, non-zero on error (message in model_opt_last_error). */
int model_opt_begin_profile(void);
int model_opt_end_profile(void);
int model_opt_plan(double time_limit_seconds);
int model_opt_begin_step(void);
int model_opt_end_step(void);

/* One statistic by name: any key of Python's model_opt.stats() whose value is a number ("allocated_bytes",
 * "peak_allocated_bytes", "reserved_bytes", "arena_bytes", "divergences", "plan_active" as 0 or 1, ...;
 * the list is the RuntimeStats report in src/report.rs); -1 for an unknown name or one that is not a
 * number. */
int64_t model_opt_stat(const char* name);

/* Copies the calling thread's last error (NUL-terminated, truncated to len) into buf; returns the
 * full length, 0 when there is none. Errors are kept per thread, like errno: read it on the thread
 * whose call failed, right after the call. */
size_t model_opt_last_error(char* buf, size_t len);
void model_opt_clear_last_error(void); /* forgets the calling thread's last error */

#ifdef __cplusplus
}
#endif

#endif /* MODEL_OPT_H */
