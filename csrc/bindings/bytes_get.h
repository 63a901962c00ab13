// BytesGet: a GET of an object (or a range of it) into a new bytes object, driven in steps, so
// that a thread can wait on it (NativeClient.get_bytes) or an event loop can be told when to
// take the next step (a CompletionPipe: s3torch.fsspec's async filesystem, zarr).
//
// A step runs when the request in flight (current()) has finished. It returns the bytes, or
// starts the next request and returns nothing: the rest of an object larger than the probe
// (WholeObjectGet), the whole read again after the object changed between probe and rest, the
// bytes to the object's real end when the size it was read to was stale.
//
// The bytes object is filled before Python sees it (the one sanctioned way to write into one):
// it is handed out only by the step that completes it. Threads: every method with the GIL
// held; the transfers run on CRT threads.
#pragma once

#include "s3torch/client.h"
#include "s3torch/completions.h"
#include "s3torch/get.h"

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace s3torch_py {

namespace py = pybind11;

class BytesGet {
  public:
    // The whole object, its size learned by a probe of a part (WholeObjectGet); an object
    // replaced between probe and rest is read again, up to kWholeAttempts times in all, unless
    // `if_match` holds the read to one version.
    static std::unique_ptr<BytesGet> whole(std::shared_ptr<s3torch::Client> client, const std::string &bucket,
                                           const std::string &key, const std::string &if_match);
    // `n` (> 0) bytes from `offset`. `to_end`: n is the object's size less offset as a hint or
    // a HEAD gave it; an answer that proves it stale is read again once, to the real end.
    static std::unique_ptr<BytesGet> range(std::shared_ptr<s3torch::Client> client, const std::string &bucket,
                                           const std::string &key, uint64_t offset, uint64_t n, bool to_end,
                                           const std::string &if_match);
    // Cancels a request still in flight and waits until the CRT lets go of the bytes' memory.
    ~BytesGet();
    BytesGet(const BytesGet &) = delete;
    BytesGet &operator=(const BytesGet &) = delete;

    s3torch::Transfer &current() { return *cur_; }
    // After current() finished: the bytes, or nullopt with the next request started. Raises
    // the read's error.
    std::optional<py::bytes> step();
    // Make the memory the current request writes resident first (prefault.h), the GIL
    // released, while it runs; nothing if that memory is not fresh (the probe's scratch). Any
    // thread (an event loop's hands it to a pool thread): it holds what it uses.
    void populate();
    // Whether populate() has memory to make resident: kPopulateMinBytes or more, fresh.
    bool wants_populate() const;
    // Whether the next step copies the probe into a new bytes object of more than a part and
    // starts the rest: work for a thread that can wait (an event loop hands it to one).
    bool heavy_next();
    // No more notifications (the rest of the read is driven by run_to_end on another thread).
    void detach() { pipe_.reset(); }
    // Post `token` to `pipe` as each request of this read finishes (the current one included).
    void notify(std::shared_ptr<s3torch::CompletionPipe> pipe, uint64_t token);
    void cancel() { cur_->cancel(); }

  private:
    BytesGet(std::shared_ptr<s3torch::Client> client, const std::string &bucket, const std::string &key,
             const std::string &if_match);
    void start_probe();
    void start_range(uint64_t n);
    void arm();
    std::optional<py::bytes> step_whole();

    std::shared_ptr<s3torch::Client> client_;
    s3torch::ErrorContext ctx_;
    std::string if_match_;
    uint64_t offset_ = 0, n_ = 0;
    bool to_end_ = false;
    int attempt_ = 1;
    bool in_rest_ = false;  // whole(): the probe answered, the rest is in flight
    std::shared_ptr<s3torch::CompletionPipe> pipe_;
    uint64_t token_ = 0;
    std::pair<char *, size_t> fresh_{nullptr, 0};
    // Declared before what writes into it, so destroyed after.
    py::object holder_;
    std::unique_ptr<s3torch::WholeObjectGet> whole_;  // whole(): probe, then rest
    std::shared_ptr<s3torch::GetInto> get_;           // range()
    s3torch::Transfer *cur_ = nullptr;                // the request in flight
};

// Drive `op` to its bytes on this thread: populate, wait (interruptibly), step.
py::bytes run_to_end(BytesGet &op);

void register_bytes_get(py::module_ &m);

}  // namespace s3torch_py
