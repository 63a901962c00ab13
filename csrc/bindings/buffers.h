// Caller memory crossing into the core: Python buffer-protocol objects (bytearray, memoryview,
// numpy arrays, ...) or DLPack producers (torch tensors via __dlpack__, CPU or pinned).
//
// A HeldBuffer keeps the exporting object pinned for as long as it lives, so the CRT can
// write into (or read from) the memory until the transfer is done. Create and destroy it
// with the GIL held.
#pragma once

#include "s3torch/errors.h"

#include <pybind11/pybind11.h>

#include <cstddef>
#include <memory>

namespace s3torch_py {

namespace py = pybind11;

class HeldBuffer {
  public:
    // `writable`: the memory will be written (GET). A read-only, non-contiguous or device
    // buffer is refused with an InvalidArgument S3Error naming the object (`ctx`).
    static std::unique_ptr<HeldBuffer> acquire(py::handle obj, bool writable, const s3torch::ErrorContext &ctx);
    ~HeldBuffer();
    HeldBuffer(const HeldBuffer &) = delete;
    HeldBuffer &operator=(const HeldBuffer &) = delete;

    void *data() const { return data_; }
    size_t size() const { return size_; }

  private:
    HeldBuffer() = default;
    void *data_ = nullptr;
    size_t size_ = 0;
    bool has_view_ = false;
    Py_buffer view_{};
    void *dl_managed_ = nullptr;  // DLManagedTensor*, deleter called on release
    py::object owner_;            // keeps the exporter alive
};

}  // namespace s3torch_py
