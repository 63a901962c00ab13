// s3torch::crc32 bit by bit (the reflected CRC-32 of zlib, continuing `previous` as
// csrc/s3torch/checksum.cpp does): for csrc/fuzz/check_transpose.cpp cross-built on its own,
// without the CRT's aws-c-checksums (scripts/check_transpose_aarch64.sh). Slow, and never
// linked into the extension.
#include "s3torch/checksum.h"

namespace s3torch {

uint32_t crc32(const void *data, size_t len, uint32_t previous) {
    const auto *p = static_cast<const unsigned char *>(data);
    uint32_t crc = ~previous;
    for (size_t i = 0; i < len; ++i) {
        crc ^= p[i];
        for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

}  // namespace s3torch
