// Large host blocks kept for the next request of the same size: the memory of HostBuffers.
//
// glibc serves a large block with a fresh mapping, so every page of it faults when first
// written, in the CRT event-loop thread that receives an object into it. A dataset's prefetch
// window frees one object's block and asks for the next object's, usually of the same size,
// one after the other (and a sequential reader of alike objects does the same): keeping the
// last few freed blocks hands the next one memory that is already resident. 400 objects of
// 4 MiB in a fresh process: about 1,000 page faults per object without, and the GETs' CPU
// (benchmarks/results/probe-sizes/README.md).
//
// Bounds: at most kBlockCacheBlocks blocks and kBlockCacheBytes bytes are kept; blocks under
// kBlockCacheMinBytes never are (malloc reuses those itself). A kept block's contents are
// whatever its last user wrote, as fresh malloc memory may hold anything: callers treat it as
// uninitialised. fork(): the cache's lock is taken around fork() (pthread_atfork), so a child
// never inherits it held; the child keeps its copies of the blocks.
#pragma once

#include <cstddef>

namespace s3torch {

constexpr size_t kBlockCacheMinBytes = size_t{256} << 10;
constexpr size_t kBlockCacheBytes = size_t{32} << 20;
constexpr size_t kBlockCacheBlocks = 4;

// `size` (> 0) bytes aligned to `align` (a power of two, a multiple of sizeof(void *)): a
// kept block of exactly that size and alignment if there is one, else posix_memalign's.
// nullptr when the allocation fails.
void *take_block(size_t size, size_t align);

// Hand back a block take_block gave (same size and alignment): kept while the bounds allow,
// else freed. Never throws.
void give_block(void *block, size_t size, size_t align) noexcept;

// How many blocks, and bytes, are kept now, read together (tests).
struct KeptBlocks {
    size_t blocks;
    size_t bytes;
};
KeptBlocks kept_blocks();

// Free every kept block.
void drop_kept_blocks();

}  // namespace s3torch
