// CRC32 (the zip / IEEE polynomial) over memory, hardware-accelerated by aws-checksums.
#pragma once

#include <cstddef>
#include <cstdint>

namespace s3torch {

uint32_t crc32(const void *data, size_t len, uint32_t previous = 0);

}  // namespace s3torch
