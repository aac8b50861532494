//! tracefs: tracepoint attachment needs it, and this machine kind does not mount it by default.
use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// Where tracefs lives on current kernels; `/sys/kernel/debug/tracing` on older set-ups.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The mounted tracefs root, if any (detected by the presence of its `events` directory).
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .map(Path::to_path_buf)
}

/// How tracefs became available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracefsState {
    AlreadyMounted,
    MountedNow,
}

/// Returns the tracefs root, mounting it at `/sys/kernel/tracing` when it is missing.
pub fn ensure() -> io::Result<(PathBuf, TracefsState)> {
    if let Some(root) = find() {
        return Ok((root, TracefsState::AlreadyMounted));
    }
    let target = Path::new(CANDIDATES[0]);
    if !target.is_dir() {
        std::fs::create_dir_all(target)?;
    }
    let source = CString::new("nodev").map_err(io::Error::other)?;
    let fstype = CString::new("tracefs").map_err(io::Error::other)?;
    let dir = CString::new(CANDIDATES[0]).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((target.to_path_buf(), TracefsState::MountedNow))
}
