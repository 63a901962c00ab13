// CRCs over memory. CRC32 (the zip / IEEE polynomial), hardware-accelerated: PCLMULQDQ folding on
// x86_64 (checksum.cpp), the ARMv8 CRC32 instructions on aarch64 (aws-checksums), a table
// otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace s3torch {

uint32_t crc32(const void *data, size_t len, uint32_t previous = 0);

// Which path crc32() takes on this CPU: "pclmul" (x86_64), "armv8-crc" (aarch64) or
// "portable" (a CPU without those instructions, or another architecture).
const char *crc32_implementation();

// The CRCs S3 stores as an object's checksum (x-amz-checksum-<name>), by that name.
enum class CrcAlgorithm { Crc32, Crc32c, Crc64Nvme };

// "crc32", "crc32c" or "crc64nvme" (any case); false for anything else.
bool parse_crc_algorithm(const std::string &name, CrcAlgorithm &out);

// The CRC of `len` bytes continuing `previous` (0 to start); a 32-bit CRC fills the low half.
uint64_t crc(CrcAlgorithm algorithm, const void *data, size_t len, uint64_t previous = 0);

// The CRC of A followed by B, from crc(A), crc(B) and len(B).
uint64_t crc_combine(CrcAlgorithm algorithm, uint64_t crc_a, uint64_t crc_b, uint64_t len_b);

// As S3 sends it: the CRC's big-endian bytes (4 or 8), base64.
std::string crc_base64(CrcAlgorithm algorithm, uint64_t value);

// The inverse; false when `text` is not the base64 of exactly that many bytes.
bool crc_from_base64(CrcAlgorithm algorithm, const std::string &text, uint64_t &out);

}  // namespace s3torch
