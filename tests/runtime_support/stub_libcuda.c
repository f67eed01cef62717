/* A stand-in for the CUDA driver: the few driver functions model_opt's CUDA backend calls, backed by
 * host memory with a fixed capacity, so the backend runs through cudarc's real loading path on a
 * machine without a GPU. Built by tests/runtime_cuda_stub.rs with SONAME libcuda.so. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;          /* CUDA_SUCCESS = 0, CUDA_ERROR_OUT_OF_MEMORY = 2 */
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;

#define CAPACITY ((size_t)256 << 20)
#define MAX_LIVE 65536

static size_t used;
static int initialized;
static CUcontext current;
static int ctx_storage[4];
static struct { CUdeviceptr ptr; size_t size; } live[MAX_LIVE];

/* Observability for the test. */
long stub_live_allocations(void) {
    long n = 0;
    for (int i = 0; i < MAX_LIVE; i++) n += live[i].ptr != 0;
    return n;
}
size_t stub_used_bytes(void) { return used; }
int stub_synchronize_calls;

CUresult cuInit(unsigned int flags) { (void)flags; initialized = 1; return 0; }
CUresult cuDeviceGetCount(int *count) { *count = 2; return 0; }
CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    if (!initialized) return 3; /* CUDA_ERROR_NOT_INITIALIZED */
    if (ordinal < 0 || ordinal >= 2) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    *dev = ordinal;
    return 0;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) { *ctx = &ctx_storage[dev]; return 0; }
CUresult cuCtxSetCurrent(CUcontext ctx) { current = ctx; return 0; }
CUresult cuCtxSynchronize(void) {
    if (!current) return 201; /* CUDA_ERROR_INVALID_CONTEXT */
    stub_synchronize_calls++;
    return 0;
}
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size) {
    if (!current) return 201;
    if (size == 0) return 1; /* CUDA_ERROR_INVALID_VALUE */
    if (used + size > CAPACITY) return 2;
    void *p = NULL;
    if (posix_memalign(&p, 512, size) != 0) return 2;
    for (int i = 0; i < MAX_LIVE; i++) {
        if (live[i].ptr == 0) {
            live[i].ptr = (CUdeviceptr)(uintptr_t)p;
            live[i].size = size;
            used += size;
            *dptr = live[i].ptr;
            return 0;
        }
    }
    free(p);
    return 2;
}
CUresult cuMemFree_v2(CUdeviceptr dptr) {
    if (!current) return 201;
    for (int i = 0; i < MAX_LIVE; i++) {
        if (live[i].ptr == dptr) {
            used -= live[i].size;
            live[i].ptr = 0;
            free((void *)(uintptr_t)dptr);
            return 0;
        }
    }
    return 1;
}
CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    if (!current) return 201;
    *free_bytes = CAPACITY - used;
    *total = CAPACITY;
    return 0;
}
