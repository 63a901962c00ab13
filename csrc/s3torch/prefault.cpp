#include "s3torch/prefault.h"

#include "s3torch/errors.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it, older kernels say EINVAL
#endif

namespace s3torch {

namespace {

uintptr_t page_size() {
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096);
    return page;
}

}  // namespace

size_t huge_page_bytes() {
    static const size_t bytes = [] {
        std::ifstream f("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
        unsigned long long n = 0;
        if (!(f >> n) || n < page_size() || (n & (n - 1)) != 0) return size_t{0};
        return static_cast<size_t>(n);
    }();
    return bytes;
}

bool huge_pages_enabled() {
    const char *want = std::getenv("S3TORCH_HUGE_PAGES");
    if (want == nullptr || *want == '\0') return false;
    const std::string v(want);
    if (v == "1") return true;
    if (v == "0") return false;
    throw_invalid("S3TORCH_HUGE_PAGES must be 0 or 1, got '" + v + "'");
}

namespace {

// huge_pages_enabled for the callers that must not throw: a malformed value reads as off (it
// is refused by name when the runtime is built, runtime.cpp).
bool huge_pages_wanted() {
    try {
        return huge_pages_enabled();
    } catch (const std::exception &) {
        return false;
    }
}

}  // namespace

size_t fill_alignment(size_t len, size_t page) {
    const size_t huge = huge_page_bytes();
    return huge != 0 && len >= huge && huge_pages_wanted() ? huge : page;
}

bool advise_huge_pages(void *data, size_t len) {
#ifdef MADV_HUGEPAGE
    const size_t huge = huge_page_bytes();
    if (data == nullptr || huge == 0 || len < huge || !huge_pages_wanted()) return false;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
    const uintptr_t first = (begin + huge - 1) & ~(uintptr_t{huge} - 1);
    const uintptr_t end = (begin + len) & ~(uintptr_t{huge} - 1);
    if (end <= first) return false;
    return madvise(reinterpret_cast<void *>(first), end - first, MADV_HUGEPAGE) == 0;
#else
    (void)data;
    (void)len;
    return false;
#endif
}

bool looks_resident(const void *data, size_t len) {
    if (data == nullptr || len == 0) return false;
    const uintptr_t page = page_size();
    const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
    for (uintptr_t at : {begin, begin + len / 2, begin + len - 1}) {
        unsigned char in_core = 0;
        if (mincore(reinterpret_cast<void *>(at & ~(page - 1)), 1, &in_core) != 0) return false;
        if (!(in_core & 1)) return false;
    }
    return true;
}

bool prefault(void *data, size_t len, bool write_fallback) {
    if (data == nullptr || len == 0) return false;
    const uintptr_t page = page_size();
    const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
    const uintptr_t first = begin & ~(page - 1);
    if (madvise(reinterpret_cast<void *>(first), begin + len - first, MADV_POPULATE_WRITE) == 0) return true;
    if (!write_fallback) return false;
    // An older kernel (EINVAL), or a mapping it refuses: one byte of each page read and
    // written back (volatile, so neither is optimized away).
    volatile unsigned char *p = static_cast<unsigned char *>(data);
    for (uintptr_t at = first; at < begin + len; at += page) {
        const uintptr_t i = (at < begin ? begin : at) - begin;
        p[i] = p[i];
    }
    return true;
}

size_t populate_while(void *data, size_t len, const std::function<bool()> &keep_going, size_t chunk, size_t min_len) {
    if (data == nullptr || len < min_len || chunk == 0 || looks_resident(data, len)) return 0;
    advise_huge_pages(data, len);
    auto *p = static_cast<unsigned char *>(data);
    size_t done = 0;
    while (done < len && keep_going()) {
        const size_t n = len - done < chunk ? len - done : chunk;
        if (!prefault(p + done, n, false)) break;  // this kernel cannot populate
        done += n;
    }
    return done;
}

}  // namespace s3torch
