//! The daemon's heap: glibc's malloc tuned at start so that memory freed after start-up goes
//! back to the kernel, and trimmed after start-up and then once a minute, so that the
//! agent's resident memory stays flat instead of holding the high-water mark of its largest
//! transient allocations (parsing the kernel's BTF to load eBPF, compiling playbooks, the
//! first socket scan).
//!
//! glibc's defaults adapt its mmap threshold upward each time a large mmapped block is freed
//! (up to 32 MiB), so later large buffers come from the heap, and the heap is given back only
//! above its top free chunk: a run of eBPF loads and socket scans left ~28 MiB of free heap
//! resident. Pinning the thresholds turns that adaptation off; two arenas bound the
//! per-thread arenas (each reserves 64 MiB and keeps its own free memory) for a daemon whose
//! work runs on one loop thread and short-lived action threads. Measured against a different
//! allocator: docs/BENCHMARKS.md, "Footprint".

/// Blocks of at least this size are mmapped (and unmapped when freed), never from the heap.
pub const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Free memory at the top of the heap beyond this goes back to the kernel at once.
pub const TRIM_THRESHOLD: i32 = 128 * 1024;
/// At most this many malloc arenas (glibc's default is 8 per core).
pub const ARENA_MAX: i32 = 2;
/// How often the daemon gives free heap pages back (`trim`).
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Sets the thresholds above; called first thing by `medic run`, before any thread starts.
/// Returns whether glibc accepted all three (elsewhere: false, nothing done).
#[allow(unsafe_code)] // FFI to glibc: no Rust API sets malloc parameters.
pub fn tune() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
        }
    }
    #[cfg(not(target_env = "gnu"))]
    false
}

/// Gives every whole free page in the heap and arenas back to the kernel (`malloc_trim(0)`,
/// which, unlike the trim threshold, also releases free pages below the heap's top). Returns
/// whether memory was released.
#[allow(unsafe_code)] // FFI to glibc.
pub fn trim() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes the arenas' locks itself; safe from any thread.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    false
}

/// Unmaps this binary's read-only pages that hold nothing of this process's own (smaps
/// `Anonymous: 0`: code and constants exactly as in the file), so that the code only start-up
/// ran (the eBPF loader, the BTF parser, the config and playbook compilers) stops counting in
/// the agent's resident memory. The pages stay in the page cache; those the loop runs fault
/// back in as minor faults (with the kernel's fault-around, 64 KiB at a time: on this build
/// ~1 MiB of the ~11 MiB start-up touched stays out). Nothing is lost: `MADV_DONTNEED` on a private file mapping with no
/// private pages leaves it reading the file's bytes. Returns the bytes of the ranges unmapped.
pub fn release_start_up_code() -> u64 {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return 0 };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
    let mut released = 0;
    for (start, end) in clean_read_only_ranges(&smaps, &exe.to_string_lossy()) {
        if advise_dontneed(start, end - start) {
            released += (end - start) as u64;
        }
    }
    released
}

/// The `[start, end)` ranges of `path`'s mappings in smaps text that are not writable and
/// hold no anonymous (private, modified) pages.
fn clean_read_only_ranges(smaps: &str, path: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // A mapping's header: range, perms, offset, dev, inode, path.
            let perms = f.next().unwrap_or("");
            let name = f.nth(3).unwrap_or("");
            current = match (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                (Ok(a), Ok(b)) if name == path && perms.starts_with('r') && !perms.contains('w') && b > a => Some((a, b)),
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let (Some(range), Some("0")) = (current.take(), f.next()) {
                out.push(range);
            }
        }
    }
    out
}

#[allow(unsafe_code)] // FFI to the kernel: no safe API drops a mapping's pages.
fn advise_dontneed(start: usize, len: usize) -> bool {
    // SAFETY: the range is one whole mapping of this binary, read-only and with no private
    // pages (checked by the caller from smaps): dropping its page-table entries loses nothing,
    // and no Rust reference is invalidated, since the bytes read afterwards are the same.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tune_and_trim_run_on_glibc() {
        assert_eq!(tune(), cfg!(target_env = "gnu"));
        // A large block freed: its pages (mmapped at this threshold) are gone; trim still runs.
        drop(vec![1u8; 4 << 20]);
        let _ = trim();
    }

    #[test]
    fn only_clean_read_only_mappings_of_the_binary_are_chosen() {
        let smaps = "\
1000-3000 r--p 00000000 fd:00 12 /usr/bin/medic
Size:                  8 kB
Anonymous:             0 kB
3000-5000 r-xp 00002000 fd:00 12 /usr/bin/medic
Anonymous:             0 kB
5000-6000 r--p 00004000 fd:00 12 /usr/bin/medic
Anonymous:             4 kB
6000-7000 rw-p 00005000 fd:00 12 /usr/bin/medic
Anonymous:             0 kB
7000-8000 r-xp 00000000 fd:00 13 /usr/lib/libc.so.6
Anonymous:             0 kB
zzzz-8000 r-xp 00000000 fd:00 12 /usr/bin/medic
Anonymous:             0 kB
";
        assert_eq!(clean_read_only_ranges(smaps, "/usr/bin/medic"), vec![(0x1000, 0x3000), (0x3000, 0x5000)]);
        assert!(clean_read_only_ranges("garbage\n-\nAnonymous: x", "/usr/bin/medic").is_empty());
    }

    #[test]
    fn released_code_still_runs() {
        let _ = release_start_up_code();
        // This test binary's code, unmapped just now, faults back in from the file.
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
