//! Without a driver the CUDA backend fails with an explanation, never a panic. Its own test binary, so
//! no driver (stub or real) was loaded before.

use model_opt::runtime::backend::cuda::LIBCUDA_ENV;
use model_opt::runtime::{Backend, BackendError, CudaBackend};

#[test]
fn a_missing_driver_is_a_clear_error() {
    // SAFETY: the only test of this binary; set before anything reads the environment.
    unsafe { std::env::set_var(LIBCUDA_ENV, "/nonexistent/libcuda.so.1") };
    let cuda = CudaBackend::new();
    let err = cuda.alloc(0, 1024).unwrap_err();
    assert!(matches!(err, BackendError::NoDriver(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/libcuda.so.1") && msg.contains("install_cpu_allocator"),
        "{msg}"
    );
    // The result is remembered: no retry storm, same answer.
    assert_eq!(cuda.alloc(0, 1024).unwrap_err(), err);

    // And through the C ABI: NULL plus a readable message, no panic.
    let p = model_opt::ffi::model_opt_alloc(1024, 0, std::ptr::null_mut());
    assert!(p.is_null());
    let mut buf = vec![0 as libc::c_char; 512];
    // SAFETY: buf has 512 writable bytes.
    let n = unsafe { model_opt::ffi::model_opt_last_error(buf.as_mut_ptr(), buf.len()) };
    assert!(n > 0);
    // SAFETY: NUL-terminated by model_opt_last_error.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    assert!(text.contains("no CUDA driver"), "{text}");
}
