//! How the services' processes take memory from the kernel.

/// Asks the kernel not to back this process with transparent huge pages.
///
/// Where the kernel's THP setting is `always` (a common default), every
/// 2 MiB-aligned region an allocator touches may be faulted in as one huge
/// page: mimalloc's arenas and glibc's large blocks then count in whole 2 MiB
/// pages however little of them is in use, which more than doubled the ledger's
/// peak RSS on mimalloc (past its 64 MiB budget) for no speed the services
/// could measure. The flag is the process's, so it is set once, first thing in
/// `main`; pages faulted in before stay as they are.
///
/// A kernel that refuses (or one that is not Linux) leaves memory as it was,
/// which changes nothing but the footprint.
pub fn use_small_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_process_asks_for_small_pages() {
        super::use_small_pages();
        assert_eq!(
            rustix::thread::transparent_huge_pages_are_disabled().ok(),
            Some(true)
        );
    }
}
