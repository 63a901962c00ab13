// fork(): the one mechanism by which the core tells its own CRT state from a parent's.
//
// CRT objects (threads, event loops, meta requests, locks they hold) belong to the process that
// created them; after fork() the child has none of the threads and may inherit locks held by
// threads that are gone. Every core object that holds CRT state records its owner process in a
// ProcessOwner when it is made. In any other process it is foreign(): the object never touches
// or frees that state there (it is leaked), and waiting on it raises instead of hanging.
#pragma once

#include "s3torch/errors.h"

#include <sys/types.h>
#include <unistd.h>

namespace s3torch {

class ProcessOwner {
  public:
    // True in any process but the one that made this (a fork()ed child).
    bool foreign() const { return pid_ != getpid(); }
    // Throw InvalidArgument naming `ctx` if foreign(): its CRT threads do not exist here.
    void require_owner(const ErrorContext &ctx) const {
        if (foreign()) throw_forked(ctx, pid_);
    }

  private:
    pid_t pid_ = getpid();
};

}  // namespace s3torch
