//! A real out-of-memory through the C ABI: NULL, the reason as the last error, a counter, and a
//! runtime that keeps working. The process's address space is capped with `RLIMIT_AS` so that the
//! host really cannot serve the request; that limit is process-wide, so this test has its own
//! binary (and is the only test in it).

mod runtime_support;

use model_opt::ffi::*;
use model_opt::runtime::global::global;
use runtime_support::c_abi::last_error;

const MIB: usize = 1 << 20;

/// The process's virtual memory size now, in bytes (`VmSize` of /proc/self/status).
fn vm_size() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("a VmSize line");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmSize in kB");
    kib * 1024
}

fn get_rlimit_as() -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid rlimit to write into.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut old) }, 0);
    old
}

fn set_rlimit_as(limit: libc::rlimit) {
    // SAFETY: a valid rlimit; the soft limit never exceeds the hard one.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
}

#[test]
fn a_request_the_host_cannot_serve_is_null_with_an_out_of_memory_message() {
    // The runtime and this thread's allocator are set up before the cap.
    let small = model_opt_host_alloc(1000);
    assert!(!small.is_null());
    model_opt_host_free(small);
    model_opt_clear_last_error();
    let before = global().stats().counters;
    assert_eq!(before.out_of_memory, 0);

    let old = get_rlimit_as();
    let cap = vm_size() + 256 * MIB;
    if old.rlim_cur != libc::RLIM_INFINITY && old.rlim_cur as usize <= cap {
        panic!(
            "RLIMIT_AS is already {} bytes; the test needs to lower it",
            old.rlim_cur
        );
    }
    set_rlimit_as(libc::rlimit {
        rlim_cur: cap as libc::rlim_t,
        rlim_max: old.rlim_max,
    });
    // 1 GiB cannot fit in the 256 MiB of address space left: a real failure of the host's
    // allocator, not a size refused up front.
    let size = 1024 * MIB;
    let p = model_opt_host_alloc(size);
    let message = last_error();
    // A request that does fit is still served under the cap.
    let fits = model_opt_host_alloc(MIB);
    set_rlimit_as(old);

    assert!(p.is_null(), "1 GiB served under a 256 MiB cap");
    assert!(!fits.is_null(), "1 MiB refused: {}", last_error());
    model_opt_host_free(fits);
    assert!(
        message.starts_with("out of memory on host device -1: could not allocate "),
        "{message}"
    );
    // posix_memalign reports ENOMEM (12).
    assert!(
        message.contains(&format!("(posix_memalign returned {})", libc::ENOMEM)),
        "{message}"
    );
    assert!(
        message.contains("call empty_cache() to return cached memory, or reduce the batch size"),
        "the message says what to do: {message}"
    );
    let after = global().stats().counters;
    assert_eq!(after.out_of_memory, 1);
    assert_eq!(
        after.allocated_bytes, 0,
        "nothing is held for the failed request"
    );
    // Counted neither as an allocation nor as a fallback allocation: only the 1 MiB one was served.
    assert_eq!(after.allocations, before.allocations + 1);
    assert_eq!(after.fallback_allocations, before.fallback_allocations + 1);

    // With the cap lifted the same request is served.
    let p = model_opt_host_alloc(size);
    assert!(!p.is_null(), "{}", last_error());
    // SAFETY: the runtime handed out `size` writable bytes.
    unsafe {
        *(p as *mut u8) = 0x5A;
        *(p as *mut u8).add(size - 1) = 0x5A;
    }
    model_opt_host_free(p);
    assert_eq!(global().stats().counters.allocated_bytes, 0);
}
