// CRC32 (the zip / IEEE polynomial) over memory, hardware-accelerated: PCLMULQDQ folding on
// x86_64 (checksum.cpp), the ARMv8 CRC32 instructions on aarch64 (aws-checksums), a table
// otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

namespace s3torch {

uint32_t crc32(const void *data, size_t len, uint32_t previous = 0);

// Which path crc32() takes on this CPU: "pclmul" (x86_64), "armv8-crc" (aarch64) or
// "portable" (a CPU without those instructions, or another architecture).
const char *crc32_implementation();

}  // namespace s3torch
