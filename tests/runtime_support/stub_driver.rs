//! The stub CUDA driver (`stub_libcuda.c`): built by the tests that load it, and its test-only
//! functions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Compiles the stub driver (SONAME `libcuda.so.1`, like the real driver) and returns its path.
pub fn build_stub() -> PathBuf {
    build_stub_as(
        &format!("stub_libcuda_{}.so", env!("CARGO_CRATE_NAME")),
        "libcuda.so.1",
        0,
    )
}

/// Compiles the stub into `dir/file_name` with `soname`; `stub_identity()` returns `identity`.
pub fn build_stub_in(dir: &Path, file_name: &str, soname: &str, identity: i32) -> PathBuf {
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/runtime_support/stub_libcuda.c");
    let out = dir.join(file_name);
    // Built under a name of its own, then renamed into place: the tests of one binary run in
    // parallel and each builds the stub, and a test loading it while another's compiler was
    // writing it read a truncated file ("file too short").
    static BUILDS: AtomicUsize = AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, Ordering::Relaxed);
    let partial = dir.join(format!("{file_name}.{}.{n}.partial", std::process::id()));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".to_string()))
        .args(["-shared", "-fPIC", "-O1", "-pthread"])
        .arg(format!("-Wl,-soname,{soname}"))
        .arg(format!("-DSTUB_IDENTITY={identity}"))
        .arg("-o")
        .arg(&partial)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed to build the stub driver");
    assert!(status.success(), "building the stub driver failed");
    std::fs::rename(&partial, &out).expect("moving the stub driver into place");
    out
}

/// Compiles the stub into the test's scratch directory as `file_name`.
pub fn build_stub_as(file_name: &str, soname: &str, identity: i32) -> PathBuf {
    let dir = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    build_stub_in(&dir, file_name, soname, identity)
}

/// Reads a function of the stub through dlsym on the already-loaded library.
pub fn stub_fn<T: Copy>(name: &str) -> T {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: RTLD_DEFAULT lookup of a symbol the stub exports; T is the matching fn pointer type.
    unsafe {
        let p = libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr());
        assert!(!p.is_null(), "stub symbol {name} not found");
        std::mem::transmute_copy::<*mut libc::c_void, T>(&p)
    }
}
