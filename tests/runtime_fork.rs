//! `fork()` while another thread allocates (a DataLoader with workers forks like this): the child
//! must not inherit the runtime's lock in its held state, and must be able to allocate and free.
//! Its own process, on the process-wide runtime through the C ABI, as the CPU shim uses it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model_opt::ffi::*;

fn churn(stop: Arc<AtomicBool>) {
    let mut held = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let p = model_opt_host_alloc(512 + (i % 17) * 4096);
        assert!(!p.is_null());
        held.push(p);
        if held.len() > 8 {
            model_opt_host_free(held.remove(0));
        }
        i += 1;
    }
    for p in held {
        model_opt_host_free(p);
    }
}

/// Forks once; the child allocates, writes, frees, checks that it follows no plan of the parent's,
/// and exits 0. Returns whether it finished in time.
fn fork_and_wait() -> bool {
    // SAFETY: fork in a test process; the child only calls the runtime and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let p = model_opt_host_alloc(1 << 16) as *mut u8;
        let ok = !p.is_null();
        if ok {
            // SAFETY: 64 KiB handed out just now.
            unsafe { std::ptr::write_bytes(p, 0x5A, 1 << 16) };
            model_opt_host_free(p as *mut libc::c_void);
        }
        // The parent's plans are not the child's: none is kept, and the runtime passes through.
        let st = model_opt::runtime::global::global().stats();
        let forgot = st.plans == 0 && st.mode == "passthrough" && !st.plan_active;
        let code = match (ok, forgot) {
            (true, true) => 0,
            (false, _) => 3,
            (true, false) => 4,
        };
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let started = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child failed: {status}"
            );
            return true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            // SAFETY: killing and reaping our own hung child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn children_forked_while_another_thread_allocates_do_not_hang() {
    // Planned mode too, so children are forked in the middle of planned steps.
    assert_eq!(model_opt_begin_profile(), 0);
    let a = model_opt_host_alloc(4096);
    model_opt_host_free(a);
    assert_eq!(model_opt_end_profile(), 0);
    assert_eq!(model_opt_plan(1.0), 0);

    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || churn(stop))
    };
    let mut hung = 0;
    // Forks in the middle of planned steps too. (Each step of this churn is a new signature;
    // planning it at the step's end is not what is tested here, so automatic planning is off.)
    model_opt::runtime::global::global().set_auto_replan(false);
    for i in 0..40 {
        let in_step = i % 2 == 0;
        if in_step {
            assert_eq!(model_opt_begin_step(), 0);
        }
        if !fork_and_wait() {
            hung += 1;
        }
        if in_step {
            assert_eq!(model_opt_end_step(), 0);
        }
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert_eq!(
        hung, 0,
        "children that hung on a lock copied in its held state"
    );
}
