//! The plugin allocator: a bump allocator that starts over whenever nothing is live.
//!
//! The host gives every call a fresh instance, so a general-purpose allocator's free lists
//! are wasted work, and its bookkeeping touches extra pages that each cost a page fault on
//! a fresh heap. Bumping a pointer touches only the bytes handed out. When the last live
//! allocation is freed (after a call, once the host has read the results) the heap starts
//! over from its base, so an instance reused for many calls does not grow either, as long
//! as the plugin frees everything it allocates. A plugin that keeps an allocation alive
//! across calls (a lazily built table, `Box::leak`) stops the reset, and a reused instance
//! then grows until its memory cap; the host's fresh instance per call never sees this.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const PAGE: usize = 65_536;

struct Heap {
    base: usize,
    next: usize,
    end: usize,
    live: usize,
}

/// A bump allocator for single-threaded WebAssembly instances.
pub(crate) struct BumpAllocator {
    heap: UnsafeCell<Heap>,
}

// SAFETY: a wasm32 plugin instance runs on one thread; there is no concurrent access.
unsafe impl Sync for BumpAllocator {}

impl BumpAllocator {
    pub(crate) const fn new() -> BumpAllocator {
        BumpAllocator { heap: UnsafeCell::new(Heap { base: 0, next: 0, end: 0, live: 0 }) }
    }
}

unsafe extern "C" {
    /// Set by the linker to the first byte after the stack and static data.
    static __heap_base: u8;
}

impl Heap {
    fn init(&mut self) {
        if self.base == 0 {
            self.base = core::ptr::addr_of!(__heap_base) as usize;
            self.next = self.base;
            self.end = core::arch::wasm32::memory_size(0) * PAGE;
        }
    }

    /// Makes `[.., up_to)` addressable, growing linear memory by whole pages.
    fn reserve(&mut self, up_to: usize) -> bool {
        if up_to <= self.end {
            return true;
        }
        let pages = (up_to - self.end).div_ceil(PAGE);
        if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
            return false;
        }
        self.end += pages * PAGE;
        true
    }
}

unsafe impl GlobalAlloc for BumpAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded (see `Sync` above) and not re-entered.
        let heap = unsafe { &mut *self.heap.get() };
        heap.init();
        let start = heap.next.next_multiple_of(layout.align());
        let Some(end) = start.checked_add(layout.size()) else { return core::ptr::null_mut() };
        if !heap.reserve(end) {
            return core::ptr::null_mut();
        }
        heap.next = end;
        heap.live += 1;
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        let heap = unsafe { &mut *self.heap.get() };
        heap.live -= 1;
        if heap.live == 0 {
            heap.next = heap.base;
        } else if ptr as usize + layout.size() == heap.next {
            heap.next = ptr as usize;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let heap = unsafe { &mut *self.heap.get() };
        // The most recent allocation grows or shrinks in place.
        if ptr as usize + layout.size() == heap.next {
            let end = ptr as usize + new_size;
            if !heap.reserve(end) {
                return core::ptr::null_mut();
            }
            heap.next = end;
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `new_size` is non-zero and the alignment is the old, valid one.
        let moved = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !moved.is_null() {
            // SAFETY: both blocks are valid for `layout.size()` bytes and do not overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, moved, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}
