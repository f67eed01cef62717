//! The C ABI's answers to requests no device can serve, and its per-thread last error. Its own
//! process, so the global runtime starts fresh.

mod runtime_support;

use model_opt::ffi::*;
use runtime_support::c_abi::{last_error, stat};

/// Sizes whose rounding used to wrap around to 0 (or to a few bytes).
const HUGE: [usize; 7] = [
    usize::MAX,
    usize::MAX - 1,
    usize::MAX - 511,
    usize::MAX - (1 << 20) + 1,
    usize::MAX - (1 << 20),
    1 << 63,
    (isize::MAX as usize) + 1,
];

#[test]
fn sizes_no_device_can_hold_are_null_with_an_out_of_memory_message() {
    let before = stat("allocated_bytes");
    for size in HUGE {
        for (what, p) in [
            ("host", model_opt_host_alloc(size)),
            (
                "device",
                model_opt_alloc(size, 0, std::ptr::null_mut::<libc::c_void>()),
            ),
        ] {
            assert!(p.is_null(), "{what} alloc({size}) returned {p:p}");
            let e = last_error();
            assert!(
                e.contains("out of memory") && e.contains(&size.to_string()),
                "{what} alloc({size}): {e}"
            );
        }
        // The next request gets memory of its own, not the address a wrapped size would have shared.
        let a = model_opt_host_alloc(4096) as *mut u8;
        let b = model_opt_host_alloc(1000) as *mut u8;
        assert!(!a.is_null() && !b.is_null());
        assert!(b as usize >= a as usize + 4096 || b as usize + 1000 <= a as usize);
        // SAFETY: the runtime handed out 4096 and 1000 writable bytes.
        unsafe {
            std::ptr::write_bytes(a, 0xAA, 4096);
            std::ptr::write_bytes(b, 0xBB, 1000);
            assert_eq!(*a.add(4095), 0xAA);
        }
        model_opt_host_free(a as *mut libc::c_void);
        model_opt_host_free(b as *mut libc::c_void);
    }
    assert_eq!(stat("allocated_bytes"), before, "no failed request counted");
}

#[test]
fn each_thread_reads_its_own_last_error() {
    // Every thread fails with a size of its own and must read back its own message, while the
    // others fail at the same moment (one shared slot returned another thread's message).
    let threads: Vec<_> = (0..4usize)
        .map(|t| {
            std::thread::spawn(move || {
                let size = usize::MAX - 1000 * t;
                let mut wrong = 0;
                for i in 0..3000 {
                    if i % 7 == 0 {
                        model_opt_clear_last_error();
                        assert_eq!(last_error(), "");
                    }
                    assert!(model_opt_host_alloc(size).is_null());
                    if !last_error().contains(&format!(" {size} bytes")) {
                        wrong += 1;
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(wrong, 0, "reads that returned another thread's error");
    // A thread that never failed has no error, whatever the others did.
    let quiet = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(quiet, "");
}
