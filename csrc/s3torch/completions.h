// CompletionPipe: how transfers tell an event loop (asyncio's) that they finished, so that no
// thread has to wait on them. An eventfd the loop watches, and the tokens of the transfers
// finished since the loop last looked (Transfer::notify_when_finished).
//
// Threads: post() runs on CRT event-loop threads (a transfer's finish) and never blocks; take()
// on the loop's thread. `mu_` guards the tokens.
//
// fork(): the eventfd is inherited (EFD_CLOEXEC only closes it on exec); a forked child makes
// pipes of its own and never takes from its parent's (the transfers of the parent do not run
// there).
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace s3torch {

class CompletionPipe {
  public:
    // Throws S3Error if the kernel gives no eventfd.
    CompletionPipe();
    ~CompletionPipe();
    CompletionPipe(const CompletionPipe &) = delete;
    CompletionPipe &operator=(const CompletionPipe &) = delete;

    // Readable while tokens wait to be taken.
    int fd() const { return fd_; }
    // Hand `token` to the loop. Never throws.
    void post(uint64_t token) noexcept;
    // The tokens posted since the last call, oldest first; the fd reads empty again.
    std::vector<uint64_t> take();

  private:
    int fd_ = -1;
    std::mutex mu_;
    std::vector<uint64_t> tokens_;  // mu_
};

}  // namespace s3torch
