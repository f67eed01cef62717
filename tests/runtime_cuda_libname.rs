//! Which driver library the CUDA backend loads: `libcuda.so.1` (the driver's SONAME, the one PyTorch's
//! CUDA runtime loads) before `libcuda.so` (often the toolkit's link-time stub), and a file named by
//! `MODEL_OPT_LIBCUDA` before both, which then also answers later `dlopen("libcuda.so.1")` calls in
//! the process, so the runtime and PyTorch share one driver.
//!
//! The library search path is read when a process starts, so each case runs this test binary again
//! as a child with `LD_LIBRARY_PATH` pointing at stub drivers that say which one they are.

mod runtime_support;

use std::ffi::{c_int, CString};
use std::path::Path;
use std::process::Command;

use model_opt::runtime::backend::driver;
use model_opt::runtime::{Backend, CudaBackend};
use runtime_support::stub_driver::build_stub_in;

const CHILD: &str = "MODEL_OPT_LIBNAME_CHILD";

/// `stub_identity()` of the library the backend loaded, after an allocation through it.
fn loaded_identity() -> c_int {
    let cuda = CudaBackend::new();
    let a = cuda.alloc(0, 4096).expect("the stub driver serves");
    cuda.free(0, a, 4096).unwrap();
    let p = driver::symbol("stub_identity").expect("a stub driver was loaded");
    // SAFETY: stub_identity is `int (void)`.
    let f: extern "C" fn() -> c_int = unsafe { std::mem::transmute(p) };
    f()
}

/// Runs `test` of this binary again with `env`; panics with the child's output when it fails.
fn run_child(test: &str, env: &[(&str, &Path)], expected: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, expected)
        .env_remove(driver::LIBCUDA_ENV)
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("child checked"),
        "the child did not run the check"
    );
}

/// A directory with two stubs: `libcuda.so.1` (identity 1) and `libcuda.so` (identity 2).
fn two_drivers(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    build_stub_in(&dir, "libcuda.so.1", "libcuda.so.1", 1);
    build_stub_in(&dir, "libcuda.so", "libcuda.so", 2);
    dir
}

#[test]
fn the_drivers_soname_is_loaded_before_the_link_time_name() {
    if std::env::var(CHILD).is_ok() {
        assert_eq!(
            loaded_identity(),
            1,
            "libcuda.so was loaded, not libcuda.so.1"
        );
        assert_eq!(driver::api().unwrap().library, "libcuda.so.1");
        println!("child checked");
        return;
    }
    let dir = two_drivers("libname_order");
    run_child(
        "the_drivers_soname_is_loaded_before_the_link_time_name",
        &[("LD_LIBRARY_PATH", &dir)],
        "1",
    );
}

#[test]
fn model_opt_libcuda_wins_and_answers_later_lookups_of_the_soname() {
    if let Ok(path) = std::env::var(driver::LIBCUDA_ENV) {
        if std::env::var(CHILD).is_ok() {
            assert_eq!(
                loaded_identity(),
                3,
                "MODEL_OPT_LIBCUDA was not the library loaded"
            );
            assert_eq!(driver::api().unwrap().library, path);
            // What PyTorch's CUDA runtime does later: dlopen("libcuda.so.1"). It must get the same
            // library, not the other one on the search path.
            let soname = CString::new("libcuda.so.1").unwrap();
            // SAFETY: RTLD_NOLOAD only looks among the loaded libraries.
            let h = unsafe { libc::dlopen(soname.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
            assert!(!h.is_null(), "no loaded library answers to libcuda.so.1");
            let name = CString::new("stub_identity").unwrap();
            // SAFETY: a symbol of a loaded library; stub_identity is `int (void)`.
            let f: extern "C" fn() -> c_int =
                unsafe { std::mem::transmute(libc::dlsym(h, name.as_ptr())) };
            assert_eq!(f(), 3, "a later dlopen(libcuda.so.1) found another driver");
            println!("child checked");
            return;
        }
    }
    let dir = two_drivers("libname_env");
    let named_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libname_env_named");
    std::fs::create_dir_all(&named_dir).unwrap();
    let named = build_stub_in(&named_dir, "my_driver.so", "libcuda.so.1", 3);
    run_child(
        "model_opt_libcuda_wins_and_answers_later_lookups_of_the_soname",
        &[("LD_LIBRARY_PATH", &dir), (driver::LIBCUDA_ENV, &named)],
        "3",
    );
}
