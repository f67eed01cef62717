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
typedef void *CUstream;
typedef int *CUevent; /* points at the event's "done" flag */

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
/* Events: work on a stream is never done until the test says so (stub_complete_events) or the
 * device synchronizes, so a test can see whether memory is reused too early. */
#define MAX_EVENTS 1024
static int event_done[MAX_EVENTS];
static int event_used[MAX_EVENTS];
long stub_live_events(void) {
    long n = 0;
    for (int i = 0; i < MAX_EVENTS; i++) n += event_used[i];
    return n;
}
void stub_complete_events(void) {
    for (int i = 0; i < MAX_EVENTS; i++) event_done[i] = 1;
}
CUresult cuEventCreate(CUevent *event, unsigned int flags) {
    (void)flags;
    if (!current) return 201;
    for (int i = 0; i < MAX_EVENTS; i++) {
        if (!event_used[i]) {
            event_used[i] = 1;
            event_done[i] = 1; /* an event never recorded counts as done, as in CUDA */
            *event = &event_done[i];
            return 0;
        }
    }
    return 2;
}
static int valid_event(CUevent e) {
    return e >= &event_done[0] && e < &event_done[MAX_EVENTS] && event_used[e - event_done];
}
CUresult cuEventRecord(CUevent event, CUstream stream) {
    (void)stream;
    if (!current) return 201;
    if (!valid_event(event)) return 400; /* CUDA_ERROR_INVALID_HANDLE */
    *event = 0;
    return 0;
}
CUresult cuEventQuery(CUevent event) {
    if (!current) return 201;
    if (!valid_event(event)) return 400;
    return *event ? 0 : 600; /* CUDA_ERROR_NOT_READY */
}
CUresult cuEventDestroy_v2(CUevent event) {
    if (!valid_event(event)) return 400;
    event_used[event - event_done] = 0;
    return 0;
}
CUresult cuCtxSynchronize(void) {
    if (!current) return 201; /* CUDA_ERROR_INVALID_CONTEXT */
    stub_synchronize_calls++;
    stub_complete_events();
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
