// The tiled transpose (csrc/s3torch/transpose.cpp) under ASan + UBSan, against an element by
// element copy: every element size, shapes on both sides of the micro-kernel (4, 8, 16
// elements), tile (64 rows, 128 for 1-byte elements, by 128 bytes of each) and streaming-store
// (1 MiB) sizes, padded and misaligned destinations, with and without the CRC of the source.
// Every source and destination is its own heap block of exactly its size, so a read or write
// past either end is a sanitizer report; bytes of the destination outside the view (the
// padding between columns, the bytes before the first) must keep their value.
//
// Built with -DS3TORCH_FUZZ=ON into build/fuzz beside the fuzz target (the same sanitizers);
// tests/unit/test_fuzz_native.py runs it. Prints the number of cases; exits 1 on the first
// mismatch, naming it.
#include "s3torch/checksum.h"
#include "s3torch/transpose.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr unsigned char kUntouched = 0xA5;

uint64_t next(uint64_t &state) {  // splitmix64: a fixed sequence, the same on every run
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// One copy of a (rows x cols) source of `n`-byte elements into columns `ld` elements apart,
// the view starting `lead` bytes into its block. Returns false, having printed why, on a mismatch.
bool check(size_t n, size_t rows, size_t cols, size_t ld, size_t lead, bool with_crc, uint64_t &state) {
    const size_t src_bytes = rows * cols * n;
    const size_t span = ((cols - 1) * ld + rows) * n;
    auto *src = static_cast<unsigned char *>(std::malloc(src_bytes));
    auto *block = static_cast<unsigned char *>(std::malloc(lead + span));
    if (src == nullptr || block == nullptr) std::abort();
    for (size_t i = 0; i < src_bytes; ++i) src[i] = static_cast<unsigned char>(next(state));
    std::memset(block, kUntouched, lead + span);
    unsigned char *dst = block + lead;

    const uint32_t previous = 0x12345678;
    uint32_t crc = previous;
    bool ok = s3torch::transpose_copy(dst, src, rows, cols, n, ld, with_crc ? &crc : nullptr);
    const char *what = ok ? nullptr : "refused the element size";
    if (what == nullptr && with_crc && crc != s3torch::crc32(src, src_bytes, previous)) what = "CRC";
    if (what == nullptr && !with_crc && crc != previous) what = "CRC written without being asked";
    for (size_t i = 0; what == nullptr && i < lead; ++i)
        if (block[i] != kUntouched) what = "a byte before the destination";
    for (size_t c = 0; what == nullptr && c < cols; ++c) {
        for (size_t r = 0; r < rows && what == nullptr; ++r)
            if (std::memcmp(dst + (c * ld + r) * n, src + (r * cols + c) * n, n) != 0) what = "an element";
        const size_t gap_end = c + 1 < cols ? (c + 1) * ld * n : span;  // padding after column c
        for (size_t i = (c * ld + rows) * n; what == nullptr && i < gap_end; ++i)
            if (dst[i] != kUntouched) what = "a padding byte";
    }
    if (what != nullptr)
        std::printf("MISMATCH (%s): itemsize %zu, rows %zu, cols %zu, ld %zu, lead %zu, crc %d\n", what, n, rows, cols,
                    ld, lead, with_crc ? 1 : 0);
    std::free(src);
    std::free(block);
    return what == nullptr;
}

}  // namespace

int main() {
    uint64_t state = 1;
    size_t cases = 0;
    const size_t sizes[] = {1, 2, 4, 8, 16};
    const size_t rows_set[] = {1, 2, 7, 8, 9, 16, 17, 63, 64, 65, 128, 130, 256};
    const size_t cols_set[] = {1, 3, 4, 5, 8, 16, 17, 31, 32, 33, 64, 65, 127, 128, 129, 257};
    for (size_t n : sizes)
        for (size_t rows : rows_set)
            for (size_t cols : cols_set)
                for (size_t pad : {size_t{0}, size_t{1}, size_t{16}})
                    // Aligned (lead 0) and one element off (no streaming stores, unaligned loads).
                    for (size_t lead : {size_t{0}, n})
                        for (bool with_crc : {false, true}) {
                            if (!check(n, rows, cols, rows + pad, lead, with_crc, state)) return 1;
                            ++cases;
                        }
    // Copies of 1 MiB and more (streaming stores where the destination's columns are 16-byte
    // aligned): whole tiles, a partial last strip and tile, aligned and not.
    for (size_t n : {size_t{1}, size_t{2}, size_t{4}, size_t{8}})
        for (size_t ld_extra : {size_t{0}, size_t{8}, size_t{3}})
            for (size_t lead : {size_t{0}, size_t{16}, size_t{1}}) {
                const size_t rows = 200, cols = (1 << 20) / (rows * n) + 65;
                for (bool with_crc : {false, true}) {
                    if (!check(n, rows, cols, rows + ld_extra, lead, with_crc, state)) return 1;
                    ++cases;
                }
            }
    std::printf("check_transpose (%s kernels): %zu cases, all equal\n", s3torch::transpose_implementation(), cases);
    return 0;
}
