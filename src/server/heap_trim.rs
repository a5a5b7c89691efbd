//! Giving memory that connections freed back to the system.
//!
//! glibc's allocator returns freed memory to the system only from the top of its heap.
//! A burst of connections allocates their HTTP buffers (about 20 KiB each) among the
//! small allocations that outlive them (socket registrations, connection records), so
//! when the burst goes idle and the buffers are freed, the pages stay resident: with
//! 10,000 idle connections that was about 440 bytes per connection of memory nobody
//! used. `malloc_trim` walks the heap and returns every wholly free page (HAProxy
//! trims its pools the same way). Elsewhere (musl, other allocators) this does
//! nothing.

/// Returns the allocator's wholly free pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // measured: see the module comment
pub(super) fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointers and glibc serialises it with every other
    // allocator call; it only ever returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the allocator's wholly free pages to the system (nothing to do here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn release_free_memory() {}
