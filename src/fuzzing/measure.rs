//! Allocation measuring for the fuzz targets: the largest single allocation each thread asks
//! for, noted by [`CountingAlloc`] where a program installs it as its global allocator, and
//! the bound a target's decoder must stay within.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The system allocator, noting the largest single allocation each thread asks for. Install it
/// with `#[global_allocator]` to have the targets check their allocation bounds.
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) {
        COUNTING.store(true, Ordering::Relaxed);
    }
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

// SAFETY: every call goes straight to `System` with the caller's arguments.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Runs `f`, then checks that no single allocation it made passed `bound` bytes.
pub(super) fn within<R>(what: &str, bound: usize, f: impl FnOnce() -> R) -> R {
    let _ = LARGEST.try_with(|l| l.set(0));
    let out = f();
    let largest = LARGEST.try_with(Cell::get).unwrap_or(0);
    if COUNTING.load(Ordering::Relaxed) {
        assert!(
            largest <= bound,
            "{what}: an allocation of {largest} bytes, over the bound of {bound}"
        );
    }
    out
}

/// What a decoder may allocate at once for `len` bytes of input beside the limit in force:
/// 16 bytes per input byte (a packed varint of one byte becomes a `u64`, and a `Vec` doubles)
/// plus 64 KiB.
pub(super) fn proportional(len: usize) -> usize {
    len.saturating_mul(16) + (64 << 10)
}
