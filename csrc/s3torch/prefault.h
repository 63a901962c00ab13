// Faulting in memory ahead of its first write: the staging ring's fresh slots, the fresh
// tensors a safetensors load lands in (on a thread of their own), and the fresh destination of
// a synchronous GET (on the thread that waits for it) are made resident while the GETs are in
// flight, instead of page by page inside the event-loop thread that copies the socket's bytes
// into them (on a 2-core machine, half of that thread's time).
#pragma once

#include <cstddef>
#include <functional>

namespace s3torch {

// Make every page of [data, data + len) resident and writable now (MADV_POPULATE_WRITE,
// Linux 5.14+; elsewhere a read and write back of one byte per page). Contents are unchanged,
// but the fallback writes: only for memory no other thread is using yet. With
// `write_fallback` false there is no fallback, and the call is safe on memory another thread
// is writing into (the kernel only maps pages). Returns false when nothing was done (an empty
// range, or the kernel cannot populate and there is no fallback).
bool prefault(void *data, size_t len, bool write_fallback = true);

// Whether the first, middle and last pages of [data, data + len) are resident (mincore): a
// buffer in use already, which populating would only walk (~0.08 CPU-s/GB for nothing).
// False for an empty range.
bool looks_resident(const void *data, size_t len);

// Ask the kernel to back the whole transparent huge pages (2 MiB on x86-64) inside
// [data, data + len) with huge pages when they are first touched (MADV_HUGEPAGE): memory about
// to be made resident and filled by GETs, so none of it is left unused. One fault per huge
// page instead of 512 (a 4.3 GB safetensors load: 1.1M page faults -> 74K), and the memory's
// users take fewer TLB misses. Only where the system leaves it to the program (THP "madvise",
// the usual default; "always" needs no advice and "never" takes none), and only where
// huge_pages_enabled. Returns whether advice was given (false: no whole huge page inside,
// not enabled, or refused); never throws.
bool advise_huge_pages(void *data, size_t len);

// S3TORCH_HUGE_PAGES=1 turns the advice on; unset, empty or "0", off. Off by default: the
// kernel may compact or reclaim memory (page cache) to find a free huge page at the fault, and
// in a VM that hands free memory back to its host (virtio-balloon free page reporting, as
// here) a huge page is most often memory the host must fault back in: populating 1 GiB took
// 1.26 s in huge pages the first time in a process, then 0.09-0.33 s, against a steady
// 0.40-0.43 s in small ones on this 2-core VM (benchmarks/results/huge-pages/populate.md).
// Anything else is an S3InvalidArgumentError naming the variable, raised when the CRT runtime
// is built (the first client). Read on each call.
bool huge_pages_enabled();

// The size of a transparent huge page on this machine (hpage_pmd_size), or 0 where the kernel
// has none.
size_t huge_page_bytes();

// The alignment for a new buffer of `len` bytes that is to be filled: a huge page where
// huge_pages_enabled and it holds one (so that all of it can be in huge pages, not all but
// its partial first and last), else `page` (the address space over-allocated is never touched).
// Never throws.
size_t fill_alignment(size_t len, size_t page);

// populate_while's defaults (and the Python prefaulting thread's, through the binding): a
// call of 2 MiB holds the process's mmap lock ~1 ms, so the event loop's own allocations
// never wait long behind it (32 MiB calls stalled a first GET for 250 ms); under 4 MiB in all,
// populating on another thread costs more than the faults it saves.
constexpr size_t kPopulateChunkBytes = size_t{2} << 20;
constexpr size_t kPopulateMinBytes = size_t{4} << 20;

// For a thread that would otherwise only wait while a GET lands in [data, data + len):
// populate it in order, `chunk` bytes at a time, while `keep_going()` says so (the GET is not
// done). No write fallback, so it is safe under the GET's writes. Nothing for less than
// `min_len` bytes, or for memory that looks_resident; huge pages advised first
// (advise_huge_pages). Returns the bytes populated.
size_t populate_while(void *data, size_t len, const std::function<bool()> &keep_going,
                      size_t chunk = kPopulateChunkBytes, size_t min_len = kPopulateMinBytes);

}  // namespace s3torch
