#include "s3torch/prefault.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it, older kernels say EINVAL
#endif

namespace s3torch {

bool prefault(void *data, size_t len) {
    if (data == nullptr || len == 0) return false;
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096);
    const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
    const uintptr_t first = begin & ~(page - 1);
    if (madvise(reinterpret_cast<void *>(first), begin + len - first, MADV_POPULATE_WRITE) == 0) return true;
    // An older kernel (EINVAL), or a mapping it refuses: one byte of each page read and
    // written back (volatile, so neither is optimized away).
    volatile unsigned char *p = static_cast<unsigned char *>(data);
    for (uintptr_t at = first; at < begin + len; at += page) {
        const uintptr_t i = (at < begin ? begin : at) - begin;
        p[i] = p[i];
    }
    return true;
}

}  // namespace s3torch
