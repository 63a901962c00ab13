// Transposing copy: row-major elements into a column-major (transposed) destination, in
// cache-sized tiles. What the staging ring needs when a checkpoint's tensor lands in a
// transposed view (or a transposed stored tensor lands in a row-major one): an elementwise
// strided copy touches a new cache line for nearly every element; tiles reuse them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace s3torch {

// dst[c * dst_ld + r] = src[r * cols + c] for r < rows, c < cols; elements of `itemsize`
// bytes (1, 2, 4, 8 or 16). `dst_ld` >= rows (elements). The regions must not overlap.
// With `crc`, *crc continues the CRC32 of the rows * cols * itemsize source bytes (in their
// order), computed as the copy reads them. Returns false (copying nothing) for another itemsize.
bool transpose_copy(void *dst, const void *src, size_t rows, size_t cols, size_t itemsize, size_t dst_ld,
                    uint32_t *crc = nullptr);

// The micro-kernels this build has for 1-, 2- and 4-byte elements: "sse2" (x86-64), "neon"
// (aarch64) or "scalar" (tiles of plain copies, which 8- and 16-byte elements always take).
const char *transpose_implementation();

}  // namespace s3torch
