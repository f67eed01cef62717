//! Reading the C ABI's answers the way a C caller does.

use std::ffi::{CStr, CString};

use model_opt::ffi::{model_opt_last_error, model_opt_stat};

/// The calling thread's last error ("" when there is none).
pub fn last_error() -> String {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: buf has 4096 writable bytes.
    let n = unsafe { model_opt_last_error(buf.as_mut_ptr(), buf.len()) };
    if n == 0 {
        return String::new();
    }
    // SAFETY: NUL-terminated by model_opt_last_error.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// One statistic by name (-1 for an unknown name).
pub fn stat(name: &str) -> i64 {
    let c = CString::new(name).unwrap();
    // SAFETY: a NUL-terminated string.
    unsafe { model_opt_stat(c.as_ptr()) }
}
