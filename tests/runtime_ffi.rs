//! The C ABI on the process-wide runtime (host memory, as the CPU shim uses it): control calls,
//! statistics, errors as values, and the header compiling as C. Its own process, so the global
//! runtime starts fresh.

mod runtime_support;

use std::path::PathBuf;
use std::process::Command;

use model_opt::ffi::*;
use model_opt::report::{Report, Value};
use model_opt::runtime::global::{global, memory_limit};
use model_opt::runtime::HOST_DEVICE;
use runtime_support::c_abi::{last_error, stat};

fn step_work() {
    let a = model_opt_host_alloc(1000);
    let b = model_opt_host_alloc(5000);
    assert!(!a.is_null() && !b.is_null());
    // SAFETY: the runtime returned 1000 and 5000 writable bytes.
    unsafe {
        std::ptr::write_bytes(a as *mut u8, 0xAB, 1000);
        std::ptr::write_bytes(b as *mut u8, 0xCD, 5000);
    }
    model_opt_host_free(a);
    let c = model_opt_host_alloc(800);
    model_opt_host_free(b);
    model_opt_host_free(c);
}

#[test]
fn the_c_abi_drives_the_runtime_and_reports_errors_as_values() {
    // Control out of order: a status, and an explanation.
    assert_eq!(model_opt_begin_step(), 1);
    assert!(last_error().contains("profile()"), "{}", last_error());
    model_opt_clear_last_error();
    assert_eq!(last_error(), "");

    assert_eq!(model_opt_begin_profile(), 0);
    step_work();
    assert_eq!(model_opt_end_profile(), 0);
    assert_eq!(model_opt_plan(-1.0), 1, "negative time limit");
    assert_eq!(model_opt_plan(1.0), 0);
    assert!(stat("arena_bytes") > 0);
    assert_eq!(stat("arena_bytes"), stat("lower_bound_bytes"));
    for _ in 0..3 {
        assert_eq!(model_opt_begin_step(), 0);
        step_work();
        assert_eq!(stat("plan_active"), 1);
        assert_eq!(model_opt_end_step(), 0);
    }
    assert_eq!(stat("planned_hits"), 9);
    assert_eq!(stat("divergences"), 0);
    assert_eq!(stat("allocated_bytes"), 0);
    assert_eq!(stat("no_such_stat"), -1);
    // Every number of the stats report answers by its key, with the value the report holds; text,
    // lists and the nested step report do not.
    let stats = global().stats();
    for (key, value) in stats.fields() {
        let expected = match value {
            Value::Int(n) => n as i64,
            Value::Bool(b) => i64::from(b),
            _ => -1,
        };
        assert_eq!(stat(key), expected, "model_opt_stat({key:?})");
    }
    assert_eq!(stat("steps"), 3, "a counter the C ABI did not list before");
    assert_eq!(stat("mode"), -1, "text is not a number");
    // SAFETY: NULL is allowed.
    assert_eq!(unsafe { model_opt_stat(std::ptr::null()) }, -1);

    // A free of memory the runtime never gave out is refused and explained, not passed on.
    let mut local = [0u8; 16];
    model_opt_host_free(local.as_mut_ptr() as *mut libc::c_void);
    assert!(
        last_error().contains("did not allocate"),
        "{}",
        last_error()
    );
    model_opt_host_free(std::ptr::null_mut());
    assert!(model_opt_host_alloc(0).is_null(), "size 0 is NULL");

    // The hooks PyTorch may call, each doing what it is documented to do.
    model_opt_clear_last_error();
    let before = global().stats();
    // init: accepted, nothing to report, nothing changes.
    model_opt_init(1);
    assert_eq!(last_error(), "", "init records no error");
    assert_eq!(global().stats(), before, "init changes no statistic");
    // Memory fraction of a device that cannot report its size (no CUDA driver here): nothing changes,
    // and the reason is the last error (the hook cannot raise).
    model_opt_set_memory_fraction(0.5, 0);
    assert!(
        last_error().starts_with("set_memory_fraction: "),
        "{}",
        last_error()
    );
    assert_eq!(memory_limit(0).1, None);
    assert_eq!(
        global().stats(),
        before,
        "set_memory_fraction changes no statistic"
    );
    model_opt_clear_last_error();
    // A host memory limit: past it, NULL with an out-of-memory message; nothing lost, and lifting the
    // limit lets the same request through.
    let (held, _) = memory_limit(HOST_DEVICE);
    // CUDA devices take limits too (the CUDA front raises PyTorch's error past them).
    assert_eq!(model_opt_set_memory_limit(0, 1 << 30), 0);
    assert_eq!(memory_limit(0).1, Some(1 << 30));
    assert_eq!(model_opt_set_memory_limit(0, -1), 0);
    assert_eq!(memory_limit(0).1, None);
    assert_eq!(
        model_opt_set_memory_limit(HOST_DEVICE, held as i64 + (1 << 20)),
        0
    );
    assert!(model_opt_host_alloc(64 << 20).is_null());
    assert!(last_error().contains("out of memory"), "{}", last_error());
    assert_eq!(
        memory_limit(HOST_DEVICE).0,
        held,
        "the refused request holds nothing"
    );
    assert_eq!(model_opt_set_memory_limit(HOST_DEVICE, -1), 0);
    let big = model_opt_host_alloc(64 << 20);
    assert!(!big.is_null());
    model_opt_host_free(big);
    model_opt_clear_last_error();
    // record_stream of a pointer that is not a live allocation (NULL, a stack address, a freed
    // allocation): ignored, with the reason kept as the last error; no counter moves.
    let freed = model_opt_host_alloc(4096);
    assert!(!freed.is_null());
    model_opt_host_free(freed);
    let before = global().stats();
    for ptr in [
        std::ptr::null_mut(),
        local.as_mut_ptr() as *mut libc::c_void,
        freed,
    ] {
        model_opt_clear_last_error();
        model_opt_record_stream(ptr, 7 as *mut libc::c_void);
        let e = last_error();
        assert!(e.starts_with("record_stream of "), "{e}");
        assert!(
            e.contains("not a live allocation of model_opt; ignored"),
            "{e}"
        );
        assert_eq!(
            global().stats(),
            before,
            "record_stream({ptr:p}) changed the statistics"
        );
    }
    // SAFETY: NULL buffer with length 0 only asks for the length.
    let n = unsafe { model_opt_last_error(std::ptr::null_mut(), 0) };
    assert_eq!(n, last_error().len(), "the length of the whole message");
    // empty_cache: the fallback pool (which served the profiled step and is empty now) goes back to
    // the system; the arena stays reserved, so reserved memory drops to the arena exactly.
    model_opt_clear_last_error();
    assert_eq!(stat("allocated_bytes"), 0);
    let pool = global().stats().fallback_reserved_bytes;
    assert!(pool > 0, "the profiled step left cached fallback memory");
    assert_eq!(stat("reserved_bytes"), stat("arena_bytes") + pool as i64);
    model_opt_empty_cache();
    assert_eq!(last_error(), "", "empty_cache records no error");
    assert_eq!(stat("reserved_bytes"), stat("arena_bytes"));
    assert_eq!(global().stats().fallback_reserved_bytes, 0);
    assert!(stat("arena_bytes") > 0, "the arena is kept");
    assert_eq!(stat("plan_active"), 1, "and so is the plan");
    // The plan still serves a step after the cache was emptied.
    let hits = stat("planned_hits");
    assert_eq!(model_opt_begin_step(), 0);
    step_work();
    assert_eq!(model_opt_end_step(), 0);
    assert_eq!(stat("planned_hits"), hits + 3);
    assert_eq!(stat("divergences"), 0);
}

#[test]
fn the_header_compiles_as_c_and_cpp() {
    let header = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cpp/model_opt.h");
    for (compiler, lang) in [("cc", "c"), ("c++", "c++")] {
        let status = Command::new(compiler)
            .args(["-fsyntax-only", "-Wall", "-Werror", "-x", lang])
            .arg(&header)
            .status();
        match status {
            Ok(s) => assert!(s.success(), "{compiler} rejects cpp/model_opt.h"),
            Err(e) => eprintln!("skipping {compiler}: {e}"),
        }
    }
}
