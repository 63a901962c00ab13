#include "s3torch/transpose.h"

#include "s3torch/checksum.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace s3torch {

namespace {

template <size_t N>
struct Elem {
    unsigned char b[N];
};

// One tile of at most kSmall x kSmall elements, read row by row (whole runs of the source)
// into a local buffer, then written column by column (whole runs of the destination). Going
// through the buffer matters: tensor rows are often a power of two apart, so the source
// lines of one column would fall into the same cache sets and evict each other.
constexpr size_t kSmall = 16;

// Copies of at least this many bytes use streaming stores (micro-kernels only).
[[maybe_unused]] constexpr size_t kStreamBytes = 1 << 20;  // x86 only (transpose_any)

template <size_t N>
void tile_scalar(Elem<N> *d, const Elem<N> *s, size_t nr, size_t nc, size_t cols, size_t dst_ld) {
    Elem<N> tile[kSmall][kSmall];
    for (size_t r = 0; r < nr; ++r) std::memcpy(tile[r], s + r * cols, nc * N);
    for (size_t c = 0; c < nc; ++c) {
        Elem<N> *out = d + c * dst_ld;
        for (size_t r = 0; r < nr; ++r) out[r] = tile[r][c];
    }
}

// The 16-byte vectors the micro-kernels are written in: SSE2 on x86-64, NEON on aarch64. The
// interleaves are the same operation on both: lo<B>(a, b) takes the low halves of a and b
// and interleaves their B-bit elements, a0 b0 a1 b1 ... (SSE2 unpacklo, NEON zip1); hi<B>
// the high halves (unpackhi, zip2).
#if defined(__SSE2__)
#define S3TORCH_VEC128 1
using V128 = __m128i;
inline V128 load16(const void *p) { return _mm_loadu_si128(static_cast<const __m128i *>(p)); }
inline V128 lo8(V128 a, V128 b) { return _mm_unpacklo_epi8(a, b); }
inline V128 hi8(V128 a, V128 b) { return _mm_unpackhi_epi8(a, b); }
inline V128 lo16(V128 a, V128 b) { return _mm_unpacklo_epi16(a, b); }
inline V128 hi16(V128 a, V128 b) { return _mm_unpackhi_epi16(a, b); }
inline V128 lo32(V128 a, V128 b) { return _mm_unpacklo_epi32(a, b); }
inline V128 hi32(V128 a, V128 b) { return _mm_unpackhi_epi32(a, b); }
inline V128 lo64(V128 a, V128 b) { return _mm_unpacklo_epi64(a, b); }
inline V128 hi64(V128 a, V128 b) { return _mm_unpackhi_epi64(a, b); }
// A 16-byte store; `Stream`: non-temporal (the destination is 16-byte aligned), so the
// written lines go to memory without first being read into the cache (write-allocate): a
// third less memory traffic for a destination that is not read again soon.
template <bool Stream>
inline void store16(void *p, V128 v) {
    if constexpr (Stream) _mm_stream_si128(static_cast<__m128i *>(p), v);
    else _mm_storeu_si128(static_cast<__m128i *>(p), v);
}
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define S3TORCH_VEC128 1
using V128 = uint8x16_t;
inline V128 load16(const void *p) { return vld1q_u8(static_cast<const uint8_t *>(p)); }
inline V128 lo8(V128 a, V128 b) { return vzip1q_u8(a, b); }
inline V128 hi8(V128 a, V128 b) { return vzip2q_u8(a, b); }
inline V128 lo16(V128 a, V128 b) {
    return vreinterpretq_u8_u16(vzip1q_u16(vreinterpretq_u16_u8(a), vreinterpretq_u16_u8(b)));
}
inline V128 hi16(V128 a, V128 b) {
    return vreinterpretq_u8_u16(vzip2q_u16(vreinterpretq_u16_u8(a), vreinterpretq_u16_u8(b)));
}
inline V128 lo32(V128 a, V128 b) {
    return vreinterpretq_u8_u32(vzip1q_u32(vreinterpretq_u32_u8(a), vreinterpretq_u32_u8(b)));
}
inline V128 hi32(V128 a, V128 b) {
    return vreinterpretq_u8_u32(vzip2q_u32(vreinterpretq_u32_u8(a), vreinterpretq_u32_u8(b)));
}
inline V128 lo64(V128 a, V128 b) {
    return vreinterpretq_u8_u64(vzip1q_u64(vreinterpretq_u64_u8(a), vreinterpretq_u64_u8(b)));
}
inline V128 hi64(V128 a, V128 b) {
    return vreinterpretq_u8_u64(vzip2q_u64(vreinterpretq_u64_u8(a), vreinterpretq_u64_u8(b)));
}
// Plain stores: streaming copies (Stream) are x86-only (transpose_any), so never asked here.
template <bool Stream>
inline void store16(void *p, V128 v) {
    static_assert(!Stream, "no streaming stores on aarch64");
    vst1q_u8(static_cast<uint8_t *>(p), v);
}
#endif

#if defined(S3TORCH_VEC128)

// 16 x 16 bytes (fp8, int8): rows of s (ss apart) to columns of d (ds apart). Four rounds of
// interleaving, each doubling the run of one column's bytes: pairs of rows (2 bytes a column),
// quads (4), octets (8), then all 16 rows.
template <bool Stream>
inline void micro_1(unsigned char *d, size_t ds, const unsigned char *s, size_t ss) {
    V128 a[16], p[16], q[16], r[16];
    for (int i = 0; i < 16; ++i) a[i] = load16(s + i * ss);
    for (int i = 0; i < 8; ++i) {
        p[2 * i] = lo8(a[2 * i], a[2 * i + 1]);      // rows 2i, 2i+1; columns 0-7
        p[2 * i + 1] = hi8(a[2 * i], a[2 * i + 1]);  // columns 8-15
    }
    for (int j = 0; j < 4; ++j) {  // q[4j + k]: rows 4j..4j+3, columns 4k..4k+3
        q[4 * j] = lo16(p[4 * j], p[4 * j + 2]);
        q[4 * j + 1] = hi16(p[4 * j], p[4 * j + 2]);
        q[4 * j + 2] = lo16(p[4 * j + 1], p[4 * j + 3]);
        q[4 * j + 3] = hi16(p[4 * j + 1], p[4 * j + 3]);
    }
    for (int h = 0; h < 2; ++h)  // r[8h + 2k + m]: rows 8h..8h+7, columns 4k+2m and 4k+2m+1
        for (int k = 0; k < 4; ++k) {
            r[8 * h + 2 * k] = lo32(q[8 * h + k], q[8 * h + 4 + k]);
            r[8 * h + 2 * k + 1] = hi32(q[8 * h + k], q[8 * h + 4 + k]);
        }
    for (int c = 0; c < 16; c += 2) {
        store16<Stream>(d + c * ds, lo64(r[c / 2], r[8 + c / 2]));
        store16<Stream>(d + (c + 1) * ds, hi64(r[c / 2], r[8 + c / 2]));
    }
}

// 8 x 8 16-bit elements: rows of s (ss elements apart) to columns of d (ds apart).
template <bool Stream>
inline void micro_2(unsigned char *dst, size_t ds, const unsigned char *src, size_t ss) {
    auto *s = reinterpret_cast<const uint16_t *>(src);
    auto *d = reinterpret_cast<uint16_t *>(dst);
    V128 a[8], b[8], c[8];
    for (int i = 0; i < 8; ++i) a[i] = load16(s + i * ss);
    for (int i = 0; i < 4; ++i) {
        b[2 * i] = lo16(a[2 * i], a[2 * i + 1]);
        b[2 * i + 1] = hi16(a[2 * i], a[2 * i + 1]);
    }
    // c0..c3 hold rows 0-3 by column pairs, c4..c7 rows 4-7.
    c[0] = lo32(b[0], b[2]);
    c[1] = hi32(b[0], b[2]);
    c[2] = lo32(b[1], b[3]);
    c[3] = hi32(b[1], b[3]);
    c[4] = lo32(b[4], b[6]);
    c[5] = hi32(b[4], b[6]);
    c[6] = lo32(b[5], b[7]);
    c[7] = hi32(b[5], b[7]);
    for (int i = 0; i < 4; ++i) {
        store16<Stream>(d + (2 * i) * ds, lo64(c[i], c[i + 4]));
        store16<Stream>(d + (2 * i + 1) * ds, hi64(c[i], c[i + 4]));
    }
}

// 4 x 4 32-bit elements.
template <bool Stream>
inline void micro_4(unsigned char *dst, size_t ds, const unsigned char *src, size_t ss) {
    auto *s = reinterpret_cast<const uint32_t *>(src);
    auto *d = reinterpret_cast<uint32_t *>(dst);
    V128 a0 = load16(s);
    V128 a1 = load16(s + ss);
    V128 a2 = load16(s + 2 * ss);
    V128 a3 = load16(s + 3 * ss);
    V128 b0 = lo32(a0, a1), b1 = hi32(a0, a1);
    V128 b2 = lo32(a2, a3), b3 = hi32(a2, a3);
    store16<Stream>(d, lo64(b0, b2));
    store16<Stream>(d + ds, hi64(b0, b2));
    store16<Stream>(d + 2 * ds, lo64(b1, b3));
    store16<Stream>(d + 3 * ds, hi64(b1, b3));
}
#endif

// Micro-kernel of M x M elements of N bytes, if this CPU build has one.
template <size_t N, bool Stream>
struct Micro {
    static constexpr size_t M = 0;
    static void run(unsigned char *, size_t, const unsigned char *, size_t) {}
};
#if defined(S3TORCH_VEC128)
template <bool Stream>
struct Micro<1, Stream> {
    static constexpr size_t M = 16;
    static void run(unsigned char *d, size_t ds, const unsigned char *s, size_t ss) { micro_1<Stream>(d, ds, s, ss); }
};
template <bool Stream>
struct Micro<2, Stream> {
    static constexpr size_t M = 8;
    static void run(unsigned char *d, size_t ds, const unsigned char *s, size_t ss) { micro_2<Stream>(d, ds, s, ss); }
};
template <bool Stream>
struct Micro<4, Stream> {
    static constexpr size_t M = 4;
    static void run(unsigned char *d, size_t ds, const unsigned char *s, size_t ss) { micro_4<Stream>(d, ds, s, ss); }
};
#endif

// Rows of source a tile spans (a strip), and the bytes of each row it takes (two cache
// lines). Each destination column gets kRows<N> * N bytes a tile: 1-byte elements take 128
// rows, so that is two lines for them too (64 rows: 3.0 GB/s for fp8, 128 rows: 3.8).
template <size_t N>
constexpr size_t kRows = N == 1 ? 128 : 64;
constexpr size_t kTileRowBytes = 128;

#if defined(S3TORCH_VEC128)
// One full tile (kRows<N> rows x kTileRowBytes of each) where there is a micro-kernel, through two
// buffers that stay in L1. The source rows are copied into a padded buffer first: rows of a
// tensor are often a power of two bytes apart, so read in place they fall into the same few
// cache sets and evict each other (a 4096-column bf16 tensor transposed at a fifth of the
// speed of a 4000-column one). The micro-kernels write the transposed tile into a column
// buffer, and each column then goes out as one run of kRows<N> elements: whole cache lines, one
// after the other, which streaming stores need to write full lines (column by column across
// the tile, they kept dozens of lines open at once).
template <size_t N, bool Stream>
void tile_buffered(unsigned char *d, size_t dst_ld, const unsigned char *s, size_t cols) {
    constexpr size_t M = Micro<N, false>::M;
    constexpr size_t kCols = kTileRowBytes / N;
    constexpr size_t kSrcPitch = kTileRowBytes + 16;  // bytes; not a power of two
    constexpr size_t kBig = kRows<N>;
    constexpr size_t kColBytes = kBig * N;
    alignas(64) unsigned char in[kBig * kSrcPitch];
    alignas(64) unsigned char out[kCols * kColBytes];
    for (size_t r = 0; r < kBig; ++r) std::memcpy(in + r * kSrcPitch, s + r * cols * N, kTileRowBytes);
    for (size_t c = 0; c < kCols; c += M)
        for (size_t r = 0; r < kBig; r += M)
            Micro<N, false>::run(out + c * kColBytes + r * N, kBig, in + r * kSrcPitch + c * N, kSrcPitch / N);
    for (size_t c = 0; c < kCols; ++c) {
        unsigned char *to = d + c * dst_ld * N;
        for (size_t k = 0; k < kColBytes; k += 16) store16<Stream>(to + k, load16(out + c * kColBytes + k));
    }
}
#endif

// Reads `len` bytes in order, one load per cache line: a strip of rows read front to back is
// what the hardware prefetcher follows; the tiles then find it in cache, where reading it
// tile by tile (dozens of rows at once) would wait on memory for each.
inline void read_ahead(const unsigned char *p, size_t len) {
    uint64_t acc = 0;
    for (size_t i = 0; i < len; i += 64) {
        uint64_t v;
        std::memcpy(&v, p + i, sizeof v);
        acc ^= v;
    }
    volatile uint64_t sink = acc;
    (void)sink;
}

// Strips of kRows<N> source rows, each read front to back first (into the CRC when one is asked:
// the CRC costs no memory traffic of its own), then cut into tiles of kRows<N> rows x kCols
// columns: buffered micro-kernel tiles where whole, elsewhere micro-kernel squares reading
// the source in place and buffered scalar tiles for the rest.
template <size_t N, bool Stream>
void transpose_tiles(unsigned char *dst, const unsigned char *src, size_t rows, size_t cols, size_t dst_ld,
                     uint32_t *crc) {
    constexpr size_t M = Micro<N, Stream>::M;
    constexpr size_t kBig = kRows<N>;
    constexpr size_t kCols = M ? kTileRowBytes / N : kBig;
    auto *d = reinterpret_cast<Elem<N> *>(dst);
    auto *s = reinterpret_cast<const Elem<N> *>(src);
    for (size_t r0 = 0; r0 < rows; r0 += kBig) {
        const size_t r1 = std::min(rows, r0 + kBig);
        const auto *strip = reinterpret_cast<const unsigned char *>(s + r0 * cols);
        if (crc != nullptr) *crc = crc32(strip, (r1 - r0) * cols * N, *crc);
        else if (Stream) read_ahead(strip, (r1 - r0) * cols * N);  // large copies: from memory
        for (size_t c0 = 0; c0 < cols; c0 += kCols) {
            const size_t c1 = std::min(cols, c0 + kCols);
#if defined(S3TORCH_VEC128)
            if constexpr (M != 0) {
                if (r1 - r0 == kBig && c1 - c0 == kCols) {
                    tile_buffered<N, Stream>(reinterpret_cast<unsigned char *>(d + c0 * dst_ld + r0), dst_ld,
                                             reinterpret_cast<const unsigned char *>(s + r0 * cols + c0), cols);
                    continue;
                }
            }
#endif
            // The part of the tile the micro-kernel covers: whole M x M squares.
            const size_t rm = M ? r0 + (r1 - r0) / M * M : r0;
            const size_t cm = M ? c0 + (c1 - c0) / M * M : c0;
            if constexpr (M != 0) {
                for (size_t c = c0; c < cm; c += M)
                    for (size_t r = r0; r < rm; r += M)
                        Micro<N, Stream>::run(reinterpret_cast<unsigned char *>(d + c * dst_ld + r), dst_ld,
                                              reinterpret_cast<const unsigned char *>(s + r * cols + c), cols);
            }
            // The rest: rows [rm, r1) of every column, and columns [cm, c1) of rows [r0, rm).
            for (size_t r = rm; r < r1; r += kSmall)
                for (size_t c = c0; c < c1; c += kSmall)
                    tile_scalar<N>(d + c * dst_ld + r, s + r * cols + c, std::min(kSmall, r1 - r),
                                   std::min(kSmall, c1 - c), cols, dst_ld);
            for (size_t r = r0; r < rm; r += kSmall)
                for (size_t c = cm; c < c1; c += kSmall)
                    tile_scalar<N>(d + c * dst_ld + r, s + r * cols + c, std::min(kSmall, rm - r),
                                   std::min(kSmall, c1 - c), cols, dst_ld);
        }
    }
}

template <size_t N>
void transpose_any(unsigned char *d, const unsigned char *s, size_t rows, size_t cols, size_t dst_ld, uint32_t *crc) {
#if defined(__SSE2__)
    // Streaming stores where every micro-kernel store is 16-byte aligned, for copies too large
    // to stay in cache anyway; then a fence, so the bytes are visible to every later load.
    const bool aligned = reinterpret_cast<uintptr_t>(d) % 16 == 0 && (dst_ld * N) % 16 == 0;
    if (Micro<N, true>::M != 0 && aligned && rows * cols * N >= kStreamBytes) {
        transpose_tiles<N, true>(d, s, rows, cols, dst_ld, crc);
        _mm_sfence();
        return;
    }
#endif
    transpose_tiles<N, false>(d, s, rows, cols, dst_ld, crc);
}

}  // namespace

const char *transpose_implementation() {
#if defined(__SSE2__)
    return "sse2";
#elif defined(S3TORCH_VEC128)
    return "neon";
#else
    return "scalar";
#endif
}

bool transpose_copy(void *dst, const void *src, size_t rows, size_t cols, size_t itemsize, size_t dst_ld,
                    uint32_t *crc) {
    auto *d = static_cast<unsigned char *>(dst);
    auto *s = static_cast<const unsigned char *>(src);
    switch (itemsize) {
        case 1: transpose_any<1>(d, s, rows, cols, dst_ld, crc); return true;
        case 2: transpose_any<2>(d, s, rows, cols, dst_ld, crc); return true;
        case 4: transpose_any<4>(d, s, rows, cols, dst_ld, crc); return true;
        case 8: transpose_any<8>(d, s, rows, cols, dst_ld, crc); return true;
        case 16: transpose_any<16>(d, s, rows, cols, dst_ld, crc); return true;
        default: return false;
    }
}

}  // namespace s3torch
