#include "s3torch/checksum.h"

#include <aws/checksums/crc.h>
#include <aws/common/config.h>
#include <aws/common/cpuid.h>
#include <aws/common/encoding.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <algorithm>
#include <cctype>

// On aarch64 aws-checksums computes this CRC with the ARMv8 CRC32 instructions (crc32x/crc32b
// are the zip polynomial, reflected, as zlib's) where the kernel reports HWCAP_CRC32, and with
// its table otherwise: aws_cpu_has_feature(AWS_CPU_FEATURE_ARM_CRC) decides, once. That path
// exists only when the CRT was configured for arm64 with CPU extensions on (cmake/crt_cache.py
// does; a cross build needs CMAKE_SYSTEM_PROCESSOR=aarch64, scripts/build_wheel.sh --arch).
#if defined(__aarch64__) && !(defined(AWS_ARCH_ARM64) && defined(AWS_USE_CPU_EXTENSIONS))
#error "aws-c-common was configured without its arm64 CPU extensions: CRC32 would be the table"
#endif

namespace s3torch {

#if defined(__x86_64__)
namespace {

// x * x^a mod P for the two halves of x (constants in k), plus the next data block.
__attribute__((target("pclmul,sse4.1"))) inline __m128i fold(__m128i x, __m128i k, __m128i data) {
    __m128i lo = _mm_clmulepi64_si128(x, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(x, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), data);
}

// CRC32 (reflected 0x04C11DB7, the zip/gzip polynomial) by carry-less multiplication:
// fold 64 bytes at a time with PCLMULQDQ, then reduce 128 -> 32 bits (Barrett). The method
// and constants are the standard ones for this polynomial (x^(4*128+-32) mod P, x^(128+-32)
// mod P, x^64 mod P, and mu = x^64 / P). `crc` is the raw register (no pre/post inversion);
// len >= 64 and a multiple of 16.
__attribute__((target("pclmul,sse4.1"))) uint32_t crc32_fold(uint32_t crc, const uint8_t *p, size_t len) {
    const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
    const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124LL);
    const __m128i poly_mu = _mm_set_epi64x(0x1f7011641LL, 0x1db710641LL);
    const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);

    __m128i x0 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
    __m128i x1 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 16));
    __m128i x2 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 32));
    __m128i x3 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 48));
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128(static_cast<int>(crc)));
    p += 64;
    len -= 64;
    while (len >= 64) {
        x0 = fold(x0, k1k2, _mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
        x1 = fold(x1, k1k2, _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 16)));
        x2 = fold(x2, k1k2, _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 32)));
        x3 = fold(x3, k1k2, _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 48)));
        p += 64;
        len -= 64;
    }
    __m128i x = fold(x0, k3k4, x1);
    x = fold(x, k3k4, x2);
    x = fold(x, k3k4, x3);
    while (len >= 16) {
        x = fold(x, k3k4, _mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
        p += 16;
        len -= 16;
    }
    // 128 -> 64 bits
    __m128i t = _mm_clmulepi64_si128(x, k3k4, 0x10);
    x = _mm_xor_si128(t, _mm_srli_si128(x, 8));
    // 64 -> 32 bits
    t = _mm_srli_si128(x, 4);
    x = _mm_clmulepi64_si128(_mm_and_si128(x, mask32), k5, 0x00);
    x = _mm_xor_si128(x, t);
    // Barrett reduction
    t = x;
    x = _mm_clmulepi64_si128(_mm_and_si128(x, mask32), poly_mu, 0x10);
    x = _mm_clmulepi64_si128(_mm_and_si128(x, mask32), poly_mu, 0x00);
    x = _mm_xor_si128(x, t);
    return static_cast<uint32_t>(_mm_extract_epi32(x, 1));
}

bool have_pclmul() {
    // CPUID leaf 1 directly, not __builtin_cpu_supports: that needs __cpu_model from the
    // compiler's runtime library, which zig's compiler-rt (release wheels) does not provide.
    static const bool ok = [] {
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_PCLMUL) && (ecx & bit_SSE4_1);
    }();
    return ok;
}

}  // namespace
#endif

uint32_t crc32(const void *data, size_t len, uint32_t previous) {
    const uint8_t *p = static_cast<const uint8_t *>(data);
#if defined(__x86_64__)
    if (len >= 64 && have_pclmul()) {
        size_t bulk = len & ~static_cast<size_t>(15);
        uint32_t reg = crc32_fold(~previous, p, bulk);
        return aws_checksums_crc32_ex(p + bulk, len - bulk, ~reg);
    }
#endif
    return aws_checksums_crc32_ex(p, len, previous);
}

const char *crc32_implementation() {
#if defined(__x86_64__)
    return have_pclmul() ? "pclmul" : "portable";
#elif defined(__aarch64__)
    return aws_cpu_has_feature(AWS_CPU_FEATURE_ARM_CRC) ? "armv8-crc" : "portable";
#else
    return "portable";
#endif
}

bool parse_crc_algorithm(const std::string &name, CrcAlgorithm &out) {
    std::string lower(name);
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    if (lower == "crc32") out = CrcAlgorithm::Crc32;
    else if (lower == "crc32c") out = CrcAlgorithm::Crc32c;
    else if (lower == "crc64nvme") out = CrcAlgorithm::Crc64Nvme;
    else return false;
    return true;
}

uint64_t crc(CrcAlgorithm algorithm, const void *data, size_t len, uint64_t previous) {
    const auto *p = static_cast<const uint8_t *>(data);
    switch (algorithm) {
        case CrcAlgorithm::Crc32: return crc32(p, len, static_cast<uint32_t>(previous));
        case CrcAlgorithm::Crc32c: return aws_checksums_crc32c_ex(p, len, static_cast<uint32_t>(previous));
        case CrcAlgorithm::Crc64Nvme: return aws_checksums_crc64nvme_ex(p, len, previous);
    }
    return 0;
}

uint64_t crc_combine(CrcAlgorithm algorithm, uint64_t crc_a, uint64_t crc_b, uint64_t len_b) {
    switch (algorithm) {
        case CrcAlgorithm::Crc32:
            return aws_checksums_crc32_combine(static_cast<uint32_t>(crc_a), static_cast<uint32_t>(crc_b), len_b);
        case CrcAlgorithm::Crc32c:
            return aws_checksums_crc32c_combine(static_cast<uint32_t>(crc_a), static_cast<uint32_t>(crc_b), len_b);
        case CrcAlgorithm::Crc64Nvme: return aws_checksums_crc64nvme_combine(crc_a, crc_b, len_b);
    }
    return 0;
}

namespace {
size_t crc_width(CrcAlgorithm algorithm) { return algorithm == CrcAlgorithm::Crc64Nvme ? 8 : 4; }
}  // namespace

std::string crc_base64(CrcAlgorithm algorithm, uint64_t value) {
    const size_t width = crc_width(algorithm);
    uint8_t raw[8];
    for (size_t i = 0; i < width; ++i) raw[i] = static_cast<uint8_t>(value >> (8 * (width - 1 - i)));
    aws_byte_cursor in = aws_byte_cursor_from_array(raw, width);
    char out[16] = {0};
    aws_byte_buf buf = aws_byte_buf_from_empty_array(out, sizeof(out));
    if (aws_base64_encode(&in, &buf)) return std::string();
    return std::string(out, buf.len);
}

bool crc_from_base64(CrcAlgorithm algorithm, const std::string &text, uint64_t &out) {
    const size_t width = crc_width(algorithm);
    if (text.size() != (width == 4 ? 8 : 12)) return false;
    aws_byte_cursor in = aws_byte_cursor_from_array(text.data(), text.size());
    size_t decoded = 0;
    if (aws_base64_compute_decoded_len(&in, &decoded) || decoded != width) return false;
    uint8_t raw[8];
    aws_byte_buf buf = aws_byte_buf_from_empty_array(raw, sizeof(raw));
    if (aws_base64_decode(&in, &buf) || buf.len != width) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < width; ++i) v = (v << 8) | raw[i];
    out = v;
    return true;
}

}  // namespace s3torch
