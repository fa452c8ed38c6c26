//! Small process helpers: liveness, signals, pid files.

use std::path::Path;

/// Whether a process with this pid exists (and is not a zombie we could reap).
pub fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks existence and permission.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // A zombie still "exists" for kill(0); it is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z"),
        Err(_) => true,
    }
}

/// Sends a signal; returns whether it was delivered.
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: plain syscall.
    pid != 0 && unsafe { libc::kill(pid as libc::pid_t, sig) } == 0
}

/// Reads a pid file; `None` when missing or not a number.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
