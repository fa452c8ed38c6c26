//! The memory allocator, chosen per process: gateways and workers want different ones.
//!
//! A worker allocates and frees for every event (the session parsed, the handler's
//! future, the commands it encodes), and mimalloc serves that with less CPU than
//! glibc's allocator; a gateway mostly holds idle clients, and glibc keeps that in
//! less memory (docs/BENCHMARKS.md, *The allocator per role*). One executable runs
//! every role, and a Rust program's global allocator is chosen when it is built, so
//! [`Allocator`] chooses at run time instead: at the process's first allocation, from
//! the environment variable [`ENV`], which the supervisor sets for each child from
//! `gateway.allocator` and `worker.allocator` (a gateway or worker started without it,
//! by hand or by a service manager, runs itself again with it set: [`run_on`]). The
//! choice then holds for the process's whole life, so memory is always freed by the
//! allocator that gave it.
//!
//! An application installs it in its binary:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOCATOR: switchboard::alloc::Allocator = switchboard::alloc::Allocator;
//! # fn main() {}
//! ```
//!
//! Without it the system allocator serves every process, whatever the configuration
//! says (a role set to `allocator = "mimalloc"` in the configuration logs a warning;
//! the workers' default does not).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable [`Allocator`] reads at a process's first allocation:
/// `mimalloc`, or anything else (or nothing) for the system allocator. The
/// supervisor sets it for each child process from its role's `allocator`.
pub const ENV: &str = "SWITCHBOARD_ALLOCATOR";

/// The same name for `getenv`, which must not allocate.
const ENV_C: &CStr = c"SWITCHBOARD_ALLOCATOR";

pub use switchboard_core::config::AllocatorKind;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

/// What this process's [`Allocator`] chose; [`UNDECIDED`] until its first allocation
/// (and for ever in a binary that does not install it).
static CHOSEN: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The allocator this process runs on, when its binary installed [`Allocator`] as its
/// global allocator; `None` when it did not (the system allocator then serves it).
///
/// ```
/// // In a binary without `#[global_allocator] static A: Allocator = Allocator;`:
/// assert_eq!(switchboard::alloc::active(), None);
/// ```
pub fn active() -> Option<AllocatorKind> {
    match CHOSEN.load(Ordering::Relaxed) {
        SYSTEM => Some(AllocatorKind::System),
        MIMALLOC => Some(AllocatorKind::Mimalloc),
        _ => None,
    }
}

/// What this process runs on, for its log: `system`, `mimalloc`, or `system (not
/// installed)` when its binary does not install [`Allocator`].
pub fn describe() -> &'static str {
    match active() {
        Some(kind) => kind.env_value(),
        None => "system (not installed)",
    }
}

/// Logs a warning when `configured` (a role's `allocator`, set explicitly) asks for
/// mimalloc and this process does not run on it: its binary does not install
/// [`Allocator`], or was built without the `mimalloc` feature.
pub fn warn_if_not_installed(configured: Option<AllocatorKind>) {
    if configured == Some(AllocatorKind::Mimalloc) && active() != Some(AllocatorKind::Mimalloc) {
        tracing::warn!(
            "allocator = \"mimalloc\" is configured, but this binary does not install \
             switchboard::alloc::Allocator as its global allocator (or was built without \
             switchboard's `mimalloc` feature): the system allocator serves this process"
        );
    }
}

/// Makes a gateway or worker process started without [`ENV`] (by hand, or by a service
/// manager, rather than by the supervisor, which always sets it) run on `wanted`, its
/// role's allocator: the process executes itself again (`/proc/self/exe`: the same
/// pid, arguments and environment) with [`ENV`] set, before it starts any thread.
/// Does nothing when the process already runs on `wanted`, when [`ENV`] is set (it
/// wins over the configuration), or when the binary does not install [`Allocator`]
/// with the `mimalloc` feature (then [`warn_if_not_installed`] speaks). Returns, with a
/// warning, when the executable cannot be run again.
pub fn run_on(wanted: AllocatorKind) {
    let Some(current) = active() else {
        return;
    };
    if current == wanted || std::env::var_os(ENV).is_some() {
        return;
    }
    if wanted == AllocatorKind::Mimalloc && !cfg!(feature = "mimalloc") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut again = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        again.arg0(arg0);
    }
    // Only returns when the executable could not be run.
    let error = again.args(args).env(ENV, wanted.env_value()).exec();
    tracing::warn!(
        %error,
        allocator = wanted.env_value(),
        "cannot run this process again on its configured allocator; it goes on with the {}",
        describe()
    );
}

/// The process's choice, made at its first allocation.
#[inline]
fn chosen() -> u8 {
    match CHOSEN.load(Ordering::Relaxed) {
        UNDECIDED => decide(),
        c => c,
    }
}

#[cold]
fn decide() -> u8 {
    // SAFETY: `getenv` with a NUL-terminated name; it allocates nothing. The first
    // allocation happens before `main` starts any thread, so nothing sets the
    // environment meanwhile; the pointer is read at once.
    let value = unsafe { libc::getenv(ENV_C.as_ptr()) };
    // SAFETY: a non-null `getenv` result is a NUL-terminated string.
    let wanted = if !value.is_null() && unsafe { CStr::from_ptr(value) }.to_bytes() == b"mimalloc" {
        MIMALLOC
    } else {
        SYSTEM
    };
    let wanted = if cfg!(feature = "mimalloc") {
        wanted
    } else {
        SYSTEM
    };
    // The first decision wins, should two threads ever race to make it.
    match CHOSEN.compare_exchange(UNDECIDED, wanted, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => wanted,
        Err(first) => first,
    }
}

/// The global allocator that is the system's or mimalloc, as [`ENV`] says at the
/// process's first allocation (see the module's documentation).
pub struct Allocator;

#[cfg(feature = "mimalloc")]
static MIMALLOC_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls `$call` on the allocator the process chose (the choice is made, and
/// [`active`] answers, also in a build without the `mimalloc` feature, where it is
/// always the system's).
macro_rules! dispatch {
    ($a:ident => $call:expr) => {{
        let chosen = chosen();
        #[cfg(feature = "mimalloc")]
        if chosen == MIMALLOC {
            let $a = &MIMALLOC_ALLOCATOR;
            return $call;
        }
        #[cfg(not(feature = "mimalloc"))]
        let _ = chosen;
        let $a = &System;
        $call
    }};
}

// SAFETY: every call is forwarded unchanged to one allocator, the same one for the
// process's whole life (the choice is made once, before the first allocation), so a
// block is always freed or resized by the allocator that gave it.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        dispatch!(a => unsafe { a.alloc(layout) })
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        dispatch!(a => unsafe { a.alloc_zeroed(layout) })
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded to the allocator that gave `ptr`.
        dispatch!(a => unsafe { a.dealloc(ptr, layout) })
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded to the allocator that gave `ptr`.
        dispatch!(a => unsafe { a.realloc(ptr, layout, new_size) })
    }
}
