/* A stand-in for the CUDA driver, as strict as the real one where model_opt's backend could go wrong,
 * backed by host memory, so the backend runs through its real loading path on a machine without a GPU.
 * Built by tests/runtime_support/stub_driver.rs with SONAME libcuda.so.1 (the real driver's).
 *
 * Strict like the driver: every call before cuInit is CUDA_ERROR_NOT_INITIALIZED; device ordinals are
 * checked; the current context is per thread, with the push/pop stack of the driver API; memory and
 * events need a current context; primary contexts are reference counted.
 *
 * Controllable, for the tests (stub_* functions):
 *   - stub_fail(call, code, times): the next `times` calls of `call` (-1: all) return `code`, any
 *     integer, including codes no driver has (the backend must not assume a known set);
 *   - stub_set_sticky(code): every call returns `code` from now on, as after an illegal address
 *     (stub_set_sticky(0) ends it, which no real driver does);
 *   - stub_set_capacity(device, bytes): out of memory past it (256 MiB per device by default);
 *   - stub_set_capturing(stream, status): a stream capturing a CUDA graph (1 active, 2 invalidated);
 *     the legacy stream (0) then answers CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, as the driver does. While a
 *     capture is active, as in the driver's default (global) capture mode: cuMemAlloc and cuMemFree
 *     are refused (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) unless the calling thread switched to the
 *     relaxed mode (cuThreadExchangeStreamCaptureMode), and cuCtxSynchronize always is; a refused call
 *     invalidates every active capture, as the driver does, and is counted (stub_capture_violations);
 *   - stub_set_device_count(n) before cuInit.
 *   - stub_hold_event_waits(on): cuEventSynchronize blocks while on;
 * and observable: live allocations and bytes, the device of an allocation, this thread's current
 * context and which device it belongs to, primary context reference counts, events (live ones,
 * queries, waits). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;
typedef void *CUstream;
typedef int *CUevent; /* points at the event's "done" flag */

enum {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    DEINITIALIZED = 4,
    INVALID_DEVICE = 101,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    NOT_READY = 600,
    ILLEGAL_ADDRESS = 700,
    STREAM_CAPTURE_UNSUPPORTED = 900,
    STREAM_CAPTURE_IMPLICIT = 906,
};
enum { CAPTURE_MODE_GLOBAL = 0, CAPTURE_MODE_RELAXED = 2 };

#define MAX_DEVICES 4
#define MAX_LIVE 65536
#define MAX_EVENTS 1024
#define MAX_FAULTS 32
#define MAX_CAPTURES 16
#define STACK_DEPTH 16

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static int device_count = 2;
static int sticky;
static size_t capacity[MAX_DEVICES] = {256u << 20, 256u << 20, 256u << 20, 256u << 20};
static size_t used[MAX_DEVICES];
static int refcount[MAX_DEVICES];
/* A context is the address of its device's slot: easy to map back. */
static int ctx_storage[MAX_DEVICES];
static struct { CUdeviceptr ptr; size_t size; int device; } live[MAX_LIVE];
static struct { char call[64]; int code; int times; } faults[MAX_FAULTS];
static struct { uintptr_t stream; int status; } captures[MAX_CAPTURES];

/* The driver API's per-thread context stack; the top is the current context. */
static __thread CUcontext stack[STACK_DEPTH];
static __thread int depth;
/* The calling thread's capture mode (cuThreadExchangeStreamCaptureMode). */
static __thread int capture_mode = CAPTURE_MODE_GLOBAL;

int stub_synchronize_calls;
int stub_capture_violations;
int stub_event_queries;
int stub_event_waits;

/* Which build this is (the library-name tests load two and ask). */
#ifndef STUB_IDENTITY
#define STUB_IDENTITY 0
#endif
int stub_identity(void) { return STUB_IDENTITY; }

static CUcontext current(void) { return depth > 0 ? stack[depth - 1] : NULL; }
static int device_of(CUcontext ctx) {
    for (int d = 0; d < MAX_DEVICES; d++)
        if (ctx == &ctx_storage[d]) return d;
    return -1;
}

/* What an injected fault or a sticky error makes `call` return; SUCCESS to go on. */
static CUresult injected(const char *call) {
    CUresult r = SUCCESS;
    pthread_mutex_lock(&lock);
    if (sticky) {
        r = sticky;
    } else {
        for (int i = 0; i < MAX_FAULTS; i++) {
            if (faults[i].times != 0 && strcmp(faults[i].call, call) == 0) {
                r = faults[i].code;
                if (faults[i].times > 0) faults[i].times--;
                break;
            }
        }
    }
    pthread_mutex_unlock(&lock);
    return r;
}

/* The checks every call after cuInit starts with. */
#define ENTER(name)                              \
    do {                                         \
        CUresult r_ = injected(name);            \
        if (r_ != SUCCESS) return r_;            \
        if (!initialized) return NOT_INITIALIZED; \
    } while (0)
#define NEED_CONTEXT()                                   \
    do {                                                 \
        if (device_of(current()) < 0) return INVALID_CONTEXT; \
    } while (0)

/* ---- controls and observations for the tests ---- */

void stub_fail(const char *call, int code, int times) {
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_FAULTS; i++) {
        if (faults[i].times == 0) {
            strncpy(faults[i].call, call, sizeof faults[i].call - 1);
            faults[i].code = code;
            faults[i].times = times;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
}
void stub_clear_faults(void) {
    pthread_mutex_lock(&lock);
    memset(faults, 0, sizeof faults);
    pthread_mutex_unlock(&lock);
}
void stub_set_sticky(int code) { pthread_mutex_lock(&lock); sticky = code; pthread_mutex_unlock(&lock); }
void stub_set_capacity(int device, size_t bytes) {
    if (device >= 0 && device < MAX_DEVICES) capacity[device] = bytes;
}
void stub_set_device_count(int n) { device_count = n < MAX_DEVICES ? n : MAX_DEVICES; }
void stub_set_capturing(uintptr_t stream, int status) {
    pthread_mutex_lock(&lock);
    int slot = -1;
    for (int i = 0; i < MAX_CAPTURES; i++) {
        if (captures[i].stream == stream && captures[i].status) { slot = i; break; }
        if (slot < 0 && !captures[i].status) slot = i;
    }
    if (slot >= 0) { captures[slot].stream = stream; captures[slot].status = status; }
    pthread_mutex_unlock(&lock);
}
/* A call the driver refuses while a capture is active in the global mode (always, for `always`): true
 * when refused, after invalidating the active captures as the driver does. */
static int refused_during_capture(int always) {
    if (!always && capture_mode == CAPTURE_MODE_RELAXED) return 0;
    int refused = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_CAPTURES; i++) {
        if (captures[i].status == 1) {
            captures[i].status = 2;
            refused = 1;
        }
    }
    pthread_mutex_unlock(&lock);
    if (refused) __atomic_fetch_add(&stub_capture_violations, 1, __ATOMIC_RELAXED);
    return refused;
}
/* The capture status of `stream` (0 none, 1 active, 2 invalidated), for the tests. */
int stub_capture_status(uintptr_t stream) {
    int status = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_CAPTURES; i++) {
        if (captures[i].status && captures[i].stream == stream) status = captures[i].status;
    }
    pthread_mutex_unlock(&lock);
    return status;
}
long stub_live_allocations(void) {
    long n = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_LIVE; i++) n += live[i].ptr != 0;
    pthread_mutex_unlock(&lock);
    return n;
}
size_t stub_used_bytes(void) {
    size_t n = 0;
    for (int d = 0; d < MAX_DEVICES; d++) n += used[d];
    return n;
}
/* The device whose context allocated the memory `addr` lies in; -1 when no live allocation holds it. */
int stub_device_of(CUdeviceptr addr) {
    int d = -1;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i].ptr != 0 && live[i].ptr <= addr && addr < live[i].ptr + live[i].size) {
            d = live[i].device;
            break;
        }
    pthread_mutex_unlock(&lock);
    return d;
}
/* The device of this thread's current context; -1 for none. */
int stub_current_device(void) { return device_of(current()); }
int stub_context_depth(void) { return depth; }
int stub_primary_refcount(int device) { return device >= 0 && device < MAX_DEVICES ? refcount[device] : -1; }

/* ---- the driver API ---- */

CUresult cuInit(unsigned int flags) {
    CUresult r = injected("cuInit");
    if (r != SUCCESS) return r;
    if (flags != 0) return INVALID_VALUE;
    initialized = 1;
    return SUCCESS;
}
CUresult cuGetErrorName(CUresult error, const char **name) {
    static const struct { int code; const char *name; } names[] = {
        {SUCCESS, "CUDA_SUCCESS"},
        {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE"},
        {OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY"},
        {NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED"},
        {DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED"},
        {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE"},
        {INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT"},
        {INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE"},
        {NOT_READY, "CUDA_ERROR_NOT_READY"},
        {ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS"},
        {STREAM_CAPTURE_IMPLICIT, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT"},
    };
    if (name == NULL) return INVALID_VALUE;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (names[i].code == error) { *name = names[i].name; return SUCCESS; }
    }
    *name = NULL; /* as the driver does for a code it does not know */
    return INVALID_VALUE;
}
CUresult cuDeviceGetCount(int *count) {
    ENTER("cuDeviceGetCount");
    if (count == NULL) return INVALID_VALUE;
    *count = device_count;
    return SUCCESS;
}
CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    ENTER("cuDeviceGet");
    if (ordinal < 0 || ordinal >= device_count) return INVALID_DEVICE;
    *dev = ordinal;
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) {
    ENTER("cuDevicePrimaryCtxRetain");
    if (dev < 0 || dev >= device_count) return INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    refcount[dev]++;
    pthread_mutex_unlock(&lock);
    *ctx = &ctx_storage[dev];
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    ENTER("cuDevicePrimaryCtxRelease_v2");
    if (dev < 0 || dev >= device_count) return INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    CUresult r = refcount[dev] > 0 ? (refcount[dev]--, SUCCESS) : INVALID_CONTEXT;
    pthread_mutex_unlock(&lock);
    return r;
}
CUresult cuCtxGetCurrent(CUcontext *ctx) {
    ENTER("cuCtxGetCurrent");
    *ctx = current();
    return SUCCESS;
}
CUresult cuCtxSetCurrent(CUcontext ctx) {
    ENTER("cuCtxSetCurrent");
    if (ctx != NULL && device_of(ctx) < 0) return INVALID_CONTEXT;
    if (ctx == NULL) {
        if (depth > 0) depth--;
    } else if (depth == 0) {
        stack[depth++] = ctx;
    } else {
        stack[depth - 1] = ctx;
    }
    return SUCCESS;
}
CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    ENTER("cuCtxPushCurrent_v2");
    if (device_of(ctx) < 0) return INVALID_CONTEXT;
    if (depth == STACK_DEPTH) return INVALID_VALUE;
    stack[depth++] = ctx;
    return SUCCESS;
}
CUresult cuCtxPopCurrent_v2(CUcontext *ctx) {
    ENTER("cuCtxPopCurrent_v2");
    if (depth == 0) return INVALID_CONTEXT;
    CUcontext top = stack[--depth];
    if (ctx != NULL) *ctx = top;
    return SUCCESS;
}

/* Events: work on a stream is never done until the test says so (stub_complete_events) or the
 * device synchronizes, so a test can see whether memory is reused too early. */
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
    ENTER("cuEventCreate");
    NEED_CONTEXT();
    CUresult r = OUT_OF_MEMORY;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_EVENTS; i++) {
        if (!event_used[i]) {
            event_used[i] = 1;
            event_done[i] = 1; /* an event never recorded counts as done, as in CUDA */
            *event = &event_done[i];
            r = SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return r;
}
static int valid_event(CUevent e) {
    return e >= &event_done[0] && e < &event_done[MAX_EVENTS] && event_used[e - event_done];
}
CUresult cuEventRecord(CUevent event, CUstream stream) {
    (void)stream;
    ENTER("cuEventRecord");
    NEED_CONTEXT();
    if (!valid_event(event)) return INVALID_HANDLE;
    *event = 0;
    return SUCCESS;
}
CUresult cuEventQuery(CUevent event) {
    ENTER("cuEventQuery");
    NEED_CONTEXT();
    if (!valid_event(event)) return INVALID_HANDLE;
    __atomic_fetch_add(&stub_event_queries, 1, __ATOMIC_RELAXED);
    return *event ? SUCCESS : NOT_READY;
}
/* cuEventSynchronize completes the event (the wait is over); with stub_hold_event_waits(1) it first
 * blocks until stub_hold_event_waits(0), so a test can act while a thread waits. */
static int hold_waits;
static pthread_cond_t waits_released = PTHREAD_COND_INITIALIZER;
void stub_hold_event_waits(int on) {
    pthread_mutex_lock(&lock);
    hold_waits = on;
    pthread_cond_broadcast(&waits_released);
    pthread_mutex_unlock(&lock);
}
CUresult cuEventSynchronize(CUevent event) {
    ENTER("cuEventSynchronize");
    NEED_CONTEXT();
    if (!valid_event(event)) return INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    __atomic_fetch_add(&stub_event_waits, 1, __ATOMIC_RELAXED);
    while (hold_waits) pthread_cond_wait(&waits_released, &lock);
    *event = 1;
    pthread_mutex_unlock(&lock);
    return SUCCESS;
}
CUresult cuEventDestroy_v2(CUevent event) {
    ENTER("cuEventDestroy_v2");
    if (!valid_event(event)) return INVALID_HANDLE;
    event_used[event - event_done] = 0;
    return SUCCESS;
}
CUresult cuCtxSynchronize(void) {
    ENTER("cuCtxSynchronize");
    NEED_CONTEXT();
    if (refused_during_capture(1)) return STREAM_CAPTURE_UNSUPPORTED;
    __atomic_fetch_add(&stub_synchronize_calls, 1, __ATOMIC_RELAXED);
    stub_complete_events();
    return SUCCESS;
}
CUresult cuStreamIsCapturing(CUstream stream, int *status) {
    ENTER("cuStreamIsCapturing");
    NEED_CONTEXT();
    CUresult r = SUCCESS;
    *status = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_CAPTURES; i++) {
        if (!captures[i].status) continue;
        if (stream == NULL) {
            r = STREAM_CAPTURE_IMPLICIT;
        } else if (captures[i].stream == (uintptr_t)stream) {
            *status = captures[i].status;
        }
    }
    pthread_mutex_unlock(&lock);
    return r;
}
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size) {
    ENTER("cuMemAlloc_v2");
    NEED_CONTEXT();
    int dev = device_of(current());
    if (size == 0) return INVALID_VALUE;
    if (refused_during_capture(0)) return STREAM_CAPTURE_UNSUPPORTED;
    CUresult r = OUT_OF_MEMORY;
    pthread_mutex_lock(&lock);
    void *p = NULL;
    if (used[dev] + size <= capacity[dev] && posix_memalign(&p, 512, size) == 0) {
        for (int i = 0; i < MAX_LIVE; i++) {
            if (live[i].ptr == 0) {
                live[i].ptr = (CUdeviceptr)(uintptr_t)p;
                live[i].size = size;
                live[i].device = dev;
                used[dev] += size;
                *dptr = live[i].ptr;
                r = SUCCESS;
                break;
            }
        }
        if (r != SUCCESS) free(p);
    }
    pthread_mutex_unlock(&lock);
    return r;
}
CUresult cuMemFree_v2(CUdeviceptr dptr) {
    ENTER("cuMemFree_v2");
    NEED_CONTEXT();
    if (refused_during_capture(0)) return STREAM_CAPTURE_UNSUPPORTED;
    CUresult r = INVALID_VALUE;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_LIVE; i++) {
        if (live[i].ptr == dptr) {
            used[live[i].device] -= live[i].size;
            live[i].ptr = 0;
            free((void *)(uintptr_t)dptr);
            r = SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return r;
}
CUresult cuThreadExchangeStreamCaptureMode(int *mode) {
    ENTER("cuThreadExchangeStreamCaptureMode");
    if (mode == NULL || *mode < 0 || *mode > 2) return INVALID_VALUE;
    int previous = capture_mode;
    capture_mode = *mode;
    *mode = previous;
    return SUCCESS;
}
CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    ENTER("cuMemGetInfo_v2");
    NEED_CONTEXT();
    int dev = device_of(current());
    *free_bytes = used[dev] < capacity[dev] ? capacity[dev] - used[dev] : 0;
    *total = capacity[dev];
    return SUCCESS;
}

/* Streams, graph capture and copies: what tests/runtime_cuda_real.rs calls besides the backend, so that
 * test can also run against the stub (MODEL_OPT_LIBCUDA=stub) before it meets a GPU. */
CUresult cuStreamCreate(CUstream *stream, unsigned int flags) {
    (void)flags;
    ENTER("cuStreamCreate");
    NEED_CONTEXT();
    *stream = malloc(1); /* a unique handle */
    return *stream ? SUCCESS : OUT_OF_MEMORY;
}
CUresult cuStreamDestroy_v2(CUstream stream) {
    ENTER("cuStreamDestroy_v2");
    if (stream == NULL) return INVALID_HANDLE;
    stub_set_capturing((uintptr_t)stream, 0);
    free(stream);
    return SUCCESS;
}
CUresult cuStreamBeginCapture_v2(CUstream stream, int mode) {
    (void)mode;
    ENTER("cuStreamBeginCapture_v2");
    NEED_CONTEXT();
    if (stream == NULL) return 900; /* CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: not the legacy stream */
    stub_set_capturing((uintptr_t)stream, 1);
    return SUCCESS;
}
CUresult cuStreamEndCapture(CUstream stream, void **graph) {
    ENTER("cuStreamEndCapture");
    stub_set_capturing((uintptr_t)stream, 0);
    *graph = malloc(1);
    return SUCCESS;
}
CUresult cuGraphDestroy(void *graph) {
    ENTER("cuGraphDestroy");
    free(graph);
    return SUCCESS;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    ENTER("cuMemcpyHtoD_v2");
    NEED_CONTEXT();
    if (stub_device_of(dst) < 0) return INVALID_VALUE;
    memcpy((void *)(uintptr_t)dst, src, n);
    return SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    ENTER("cuMemcpyDtoH_v2");
    NEED_CONTEXT();
    if (stub_device_of(src) < 0) return INVALID_VALUE;
    memcpy(dst, (const void *)(uintptr_t)src, n);
    return SUCCESS;
}
