// BytesPut: a whole object of at most a part PUT from caller memory, for an event loop: the
// one PutObject starts at once and posts to a CompletionPipe when it finishes, and step()
// (GIL held) then completes the upload (Upload::wait_step) and gives its ETag. Larger objects
// are multipart uploads, whose writes a thread waits on (UploadHandle).
#pragma once

#include "buffers.h"

#include "s3torch/completions.h"
#include "s3torch/put.h"

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

namespace s3torch_py {

namespace py = pybind11;

class BytesPut {
  public:
    // nullptr when `data` is more than a part.
    static std::unique_ptr<BytesPut> start(std::shared_ptr<s3torch::Client> client, const std::string &bucket,
                                           const std::string &key, py::handle data, bool exclusive);
    // Aborts an upload not completed (a cancelled one), waiting until the CRT lets go of the data.
    ~BytesPut();
    BytesPut(const BytesPut &) = delete;
    BytesPut &operator=(const BytesPut &) = delete;

    // After the PutObject finished: the ETag (or ""), or its error.
    std::string step();
    void notify(std::shared_ptr<s3torch::CompletionPipe> pipe, uint64_t token);
    void cancel();

  private:
    BytesPut() = default;
    std::unique_ptr<HeldBuffer> data_;  // declared first: outlives the upload that reads it
    std::unique_ptr<s3torch::Upload> upload_;
};

void register_bytes_put(py::module_ &m);

}  // namespace s3torch_py
