//! `switchboard::alloc::Allocator` as a real process's global allocator: the choice the
//! environment makes at the first allocation, and every kind of call served by the
//! allocator chosen (a block given by mimalloc lies in mimalloc's heap, one given by
//! the system's does not). Each case runs this test binary again as a child process
//! with `SWITCHBOARD_ALLOCATOR` set, since the choice is made once per process.

#![cfg(feature = "mimalloc")]

use std::process::Command;

use switchboard::alloc::{self, Allocator, AllocatorKind};

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// Set in the child processes: the test then checks its own process.
const CHILD: &str = "SWITCHBOARD_ALLOC_TEST_EXPECT";

fn in_mimalloc_heap(p: *const u8) -> bool {
    // SAFETY: a pure query on an address; it dereferences nothing.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(p.cast()) }
}

/// The child's part: the process runs on `expected`, and every call lands there.
fn check_this_process(expected: AllocatorKind) {
    assert_eq!(alloc::active(), Some(expected));
    let on_mimalloc = expected == AllocatorKind::Mimalloc;
    for size in [1, 24, 1000, 5000, 300_000, 4 << 20] {
        let mut v = vec![7u8; size];
        assert_eq!(in_mimalloc_heap(v.as_ptr()), on_mimalloc, "{size} bytes");
        // realloc, growing past the size class and shrinking back.
        v.resize(size * 3, 9);
        assert!(v[..size].iter().all(|&b| b == 7) && v[size..].iter().all(|&b| b == 9));
        assert_eq!(in_mimalloc_heap(v.as_ptr()), on_mimalloc);
        v.truncate(size / 2 + 1);
        v.shrink_to_fit();
        assert!(v.iter().all(|&b| b == 7));
        // alloc_zeroed.
        let z = vec![0u64; size];
        assert!(z.iter().all(|&x| x == 0));
        assert_eq!(in_mimalloc_heap(z.as_ptr().cast()), on_mimalloc);
    }
    // Blocks made on one thread, freed on another.
    let made: Vec<Box<[u8; 100]>> = (0..1000).map(|_| Box::new([1; 100])).collect();
    std::thread::spawn(move || drop(made))
        .join()
        .expect("the freeing thread");
    println!("allocator: {}", alloc::describe());
}

#[test]
fn the_environment_chooses_the_allocator_at_the_first_allocation() {
    if let Ok(expected) = std::env::var(CHILD) {
        let kind = match expected.as_str() {
            "mimalloc" => AllocatorKind::Mimalloc,
            _ => AllocatorKind::System,
        };
        check_this_process(kind);
        return;
    }
    // (value of SWITCHBOARD_ALLOCATOR, the allocator the process must run on)
    let cases = [
        (Some("mimalloc"), "mimalloc"),
        (Some("system"), "system"),
        (None, "system"),
        // Anything else is the system's: the supervisor sets only the two names.
        (Some("jemalloc"), "system"),
        (Some(""), "system"),
    ];
    let exe = std::env::current_exe().expect("this test's executable");
    for (value, expected) in cases {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            "the_environment_chooses_the_allocator_at_the_first_allocation",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, expected);
        match value {
            Some(v) => cmd.env(alloc::ENV, v),
            None => cmd.env_remove(alloc::ENV),
        };
        let out = cmd.output().expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("allocator: {expected}\n")),
            "{}={value:?}: {}\n{stdout}\n{}",
            alloc::ENV,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
