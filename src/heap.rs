//! Process-wide heap settings for the long-running roles.
//!
//! glibc's malloc gives each thread that meets lock contention its own arena (up to eight
//! per core) and keeps every arena's high-water mark: a controller whose tokio workers all
//! decoded the initial Machine list holds that burst in several arenas for good. Measured
//! with 500 Machines (BENCHMARKS.md, item 6): idle RSS 45.5 MiB with glibc's default,
//! 42.5 MiB with two arenas, 36.0 MiB with one, for about the same CPU (11.2 against 10.8
//! CPU seconds for the scale-up: the controller mostly waits on the API server, not on
//! malloc).
//!
//! The static musl image keeps musl's own malloc, which hands freed memory back to the kernel:
//! with 500 Machines its one-process sidecar idles at about 24 MiB, against 45 MiB for this
//! glibc tuning and 27–32 MiB for mimalloc with transparent huge pages off (60 MiB with them
//! on), for more CPU in allocation bursts only (BENCHMARKS.md, item 8).

/// Caps glibc's malloc at `arenas` arenas for the rest of the process. Call it before the
/// async runtime starts its threads. A no-op where the C library is not glibc (the static
/// musl image has a single-heap allocator already).
#[allow(unsafe_code)]
pub fn limit_malloc_arenas(arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX is valid at any time and
    // affects arenas created afterwards. No pointer is passed.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}
