// Python-owned handles: each pairs a core transfer with the caller memory it uses, and waits
// on it with the GIL released (interruptible by signals, e.g. KeyboardInterrupt).
#pragma once

#include "buffers.h"

#include "s3torch/get.h"
#include "s3torch/get_stream.h"
#include "s3torch/put.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::optional results

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

namespace s3torch_py {

namespace py = pybind11;

// Wait until `t` has finished, GIL released; on a signal, cancel it, wait, and raise.
void wait_transfer(s3torch::Transfer &t);
// Wait, GIL released and interruptible, until `step(timeout_ms)` returns true; on a signal,
// `on_interrupt` runs and the Python exception propagates.
void wait_until(const std::function<bool(int64_t)> &step, const std::function<void()> &on_interrupt);

// For a wait that runs with the GIL released: takes the GIL, logs the retry reports due, and
// throws py::error_already_set (KeyboardInterrupt) if a signal is pending.
void check_interrupt();

// A GET into caller memory in flight. Holds the buffer until the CRT is done with it; if
// dropped early, cancels and waits so the memory is never written after release.
class GetHandle {
  public:
    GetHandle(std::shared_ptr<s3torch::GetInto> t, std::unique_ptr<HeldBuffer> buf)
        : t_(std::move(t)), buf_(std::move(buf)) {}
    ~GetHandle();
    // Block (GIL released, interruptible) until done; the bytes received. `populate`: this
    // thread, which would only wait, makes the destination's pages resident meanwhile, ahead
    // of the GET (fresh memory: torch.load's storages, a reader's buffer), instead of the
    // event-loop thread taking each page's fault as it copies the bytes in (prefault.h).
    size_t wait(bool populate = false);
    bool done() { return t_->done(); }
    void cancel() { t_->cancel(); }
    uint64_t object_size() { return t_->object_size(); }
    std::string etag() { return t_->etag(); }
    s3torch::GetInto &transfer() { return *t_; }
    // The caller memory the GET lands in.
    void *data() { return buf_->data(); }
    size_t size() { return buf_->size(); }

  private:
    std::shared_ptr<s3torch::GetInto> t_;
    std::unique_ptr<HeldBuffer> buf_;
};

// Wait (GIL released, interruptible) until one of `handles` has finished or `timeout_s` has
// passed (nullopt: forever); the index of the first finished one, or nullopt on timeout.
std::optional<size_t> wait_any(const std::vector<GetHandle *> &handles, std::optional<double> timeout_s);

// One chunk of a streaming GET: a read-only buffer over CRT memory.
class StreamChunk {
  public:
    explicit StreamChunk(std::unique_ptr<s3torch::Chunk> c) : c_(std::move(c)) {}
    py::buffer_info info();
    uint64_t offset() const { return c_->offset(); }
    size_t size() const { return c_->size(); }

  private:
    std::unique_ptr<s3torch::Chunk> c_;
};

class StreamHandle {
  public:
    explicit StreamHandle(std::shared_ptr<s3torch::GetStream> s) : s_(std::move(s)) {}
    ~StreamHandle() { close(); }
    // Next chunk, or None at the end of the object.
    std::optional<StreamChunk> next_chunk();
    uint64_t buffered_bytes() { return s_ ? s_->buffered_bytes() : 0; }
    // The ETag of the version being streamed, once its first answer came ("" before, after
    // close(), or when the server sends none).
    std::string etag() { return s_ ? s_->header("etag") : std::string(); }
    void close();

  private:
    std::shared_ptr<s3torch::GetStream> s_;
};

// A streaming upload; aborted if dropped before complete().
class UploadHandle {
  public:
    explicit UploadHandle(std::unique_ptr<s3torch::Upload> u) : u_(std::move(u)) {}
    ~UploadHandle();
    size_t write(py::handle data);
    // The whole object from `buf` (Upload::put_begin), completed; returns the ETag.
    std::string put(HeldBuffer &buf);
    std::string complete();
    void abort();
    uint64_t bytes_written() const { return u_->bytes_written(); }
    bool closed() const { return u_->closed(); }

  private:
    void wait_steps();
    std::unique_ptr<s3torch::Upload> u_;
};

// Uninitialised, page-aligned host memory with the buffer protocol: destinations for GETs
// that need no zero-filling first (bytearray(n) would write every page once before the
// download writes it again).
class HostBuffer {
  public:
    explicit HostBuffer(size_t n);
    ~HostBuffer();
    HostBuffer(const HostBuffer &) = delete;
    HostBuffer &operator=(const HostBuffer &) = delete;
    py::buffer_info info();
    size_t size() const { return size_; }

  private:
    void *data_ = nullptr;
    size_t size_;
    size_t align_ = 0;
};

// Define the Python classes GetHandle, StreamChunk, GetStream, Upload and HostBuffer.
void register_handles(py::module_ &m);

}  // namespace s3torch_py
