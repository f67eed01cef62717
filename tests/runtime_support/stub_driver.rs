//! The stub CUDA driver (`stub_libcuda.c`): built once per test binary, and its test-only functions.

use std::path::PathBuf;
use std::process::Command;

/// Compiles the stub driver (SONAME `libcuda.so`) and returns its path.
pub fn build_stub() -> PathBuf {
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/runtime_support/stub_libcuda.c");
    let dir = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let out = dir.join(format!("stub_libcuda_{}.so", env!("CARGO_CRATE_NAME")));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".to_string()))
        .args(["-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed to build the stub driver");
    assert!(status.success(), "building the stub driver failed");
    out
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
