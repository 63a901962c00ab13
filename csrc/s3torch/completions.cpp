#include "s3torch/completions.h"

#include "s3torch/errors.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace s3torch {

CompletionPipe::CompletionPipe() {
    fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd_ < 0) throw S3Error(ErrorKind::Generic, std::string("cannot make an eventfd: ") + std::strerror(errno), {});
}

CompletionPipe::~CompletionPipe() {
    if (fd_ >= 0) ::close(fd_);
}

void CompletionPipe::post(uint64_t token) noexcept {
    {
        std::lock_guard<std::mutex> lock(mu_);
        try {
            tokens_.push_back(token);
        } catch (...) {
            return;  // out of memory: the loop's caller waits on its own timeout, if any
        }
    }
    const uint64_t one = 1;
    // EAGAIN only when the counter would overflow, when the loop is woken anyway.
    while (::write(fd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

std::vector<uint64_t> CompletionPipe::take() {
    uint64_t count;
    // Read first, then take: a token posted in between is taken now and wakes the loop once
    // more for nothing, never the other way round (a token left behind with no wake).
    while (::read(fd_, &count, sizeof count) < 0 && errno == EINTR) {
    }
    std::vector<uint64_t> out;
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(tokens_);
    return out;
}

}  // namespace s3torch
