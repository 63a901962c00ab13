#include "s3torch/checksum.h"

#include <aws/checksums/crc.h>

namespace s3torch {

uint32_t crc32(const void *data, size_t len, uint32_t previous) {
    return aws_checksums_crc32_ex(static_cast<const uint8_t *>(data), len, previous);
}

}  // namespace s3torch
