#include "handles.h"

#include "s3torch/block_cache.h"
#include "s3torch/endpoint_health.h"
#include "s3torch/prefault.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

namespace s3torch_py {

namespace {

// How long a wait holds off signal checks (KeyboardInterrupt is noticed within this).
constexpr int64_t kWaitSliceMs = 100;
constexpr size_t kPageSize = 4096;  // HostBuffer's least alignment

// Log the retry reports due now (endpoint_health.h) as WARNINGs on the "s3torch" logger. Runs
// on a caller thread that holds the GIL, between wait slices: the one place retry reports
// reach Python. A logging error never fails the wait.
void log_retry_reports() {
    std::vector<std::string> lines = s3torch::take_retry_reports();
    if (lines.empty()) return;
    try {
        py::object logger = py::module_::import("logging").attr("getLogger")("s3torch");
        for (const std::string &line : lines) logger.attr("warning")(line);
    } catch (py::error_already_set &e) {
        e.discard_as_unraisable("s3torch retry report");
    }
}

// Run `step(timeout_ms) -> bool done` with the GIL released, checking for signals
// (KeyboardInterrupt) and logging retry reports between slices. On a signal, `on_interrupt`
// runs (GIL released) and the Python exception propagates.
template <class Step, class OnInterrupt>
void wait_interruptible(Step &&step, OnInterrupt &&on_interrupt) {
    for (;;) {
        bool done;
        {
            py::gil_scoped_release nogil;
            done = step(kWaitSliceMs);
        }
        log_retry_reports();
        if (done) return;
        if (PyErr_CheckSignals() != 0) {
            py::error_already_set err;
            {
                py::gil_scoped_release nogil;
                on_interrupt();
            }
            throw err;
        }
    }
}

}  // namespace

void check_interrupt() {
    py::gil_scoped_acquire gil;
    log_retry_reports();
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

void wait_transfer(s3torch::Transfer &t) {
    wait_interruptible([&](int64_t ms) { return t.wait_for(ms); }, [&] { t.cancel_and_wait(); });
}

void wait_until(const std::function<bool(int64_t)> &step, const std::function<void()> &on_interrupt) {
    wait_interruptible(step, on_interrupt);
}

std::optional<size_t> wait_any(const std::vector<GetHandle *> &handles, std::optional<double> timeout_s) {
    std::vector<s3torch::Transfer *> transfers;
    transfers.reserve(handles.size());
    for (GetHandle *h : handles) {
        if (h == nullptr) s3torch::throw_invalid("wait_any: None is not a GetHandle", s3torch::ErrorContext{});
        transfers.push_back(&h->transfer());
    }
    const bool forever = !timeout_s;
    const int64_t budget_ms = forever ? 0 : static_cast<int64_t>(std::max(0.0, *timeout_s) * 1000.0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(budget_ms);
    int64_t index = -1;
    bool timed_out = false;
    // On a signal nothing is cancelled: the caller owns the handles and decides.
    wait_interruptible(
        [&](int64_t slice_ms) {
            int64_t ms = slice_ms;
            if (!forever) {
                auto left =
                    std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now())
                        .count();
                ms = std::max<int64_t>(0, std::min<int64_t>(slice_ms, left));
            }
            index = s3torch::wait_any(transfers, ms);
            if (index >= 0) return true;
            timed_out = !forever && std::chrono::steady_clock::now() >= deadline;
            return timed_out;
        },
        [] {});
    if (index < 0) return std::nullopt;
    return static_cast<size_t>(index);
}

GetHandle::~GetHandle() {
    if (t_ && !t_->done()) {
        py::gil_scoped_release nogil;
        t_->cancel_and_wait();
    }
}

size_t GetHandle::wait(bool populate) {
    if (populate) {
        py::gil_scoped_release nogil;
        s3torch::populate_while(data(), size(), [this] { return !t_->done(); });
    }
    wait_transfer(*t_);
    t_->raise_if_failed();
    return t_->bytes_received();
}

py::buffer_info StreamChunk::info() {
    return py::buffer_info(const_cast<uint8_t *>(c_->data()), 1, py::format_descriptor<uint8_t>::format(), 1,
                           {static_cast<py::ssize_t>(c_->size())}, {1}, /*readonly=*/true);
}

std::optional<StreamChunk> StreamHandle::next_chunk() {
    if (!s_) s3torch::throw_invalid("read from a closed stream");
    std::unique_ptr<s3torch::Chunk> got;
    wait_interruptible(
        [&](int64_t ms) {
            bool timed_out = false;
            got = s_->next(ms, &timed_out);
            return !timed_out;
        },
        [&] { s_->cancel(); });
    if (!got) return std::nullopt;
    return StreamChunk(std::move(got));
}

void StreamHandle::close() {
    if (s_ && !s_->done()) {
        py::gil_scoped_release nogil;
        s_->cancel_and_wait();
    }
    s_.reset();
}

UploadHandle::~UploadHandle() {
    if (u_ && !u_->closed()) {
        py::gil_scoped_release nogil;
        u_->abort();
    }
}

void UploadHandle::wait_steps() {
    wait_interruptible([&](int64_t ms) { return u_->wait_step(ms); }, [&] { u_->abort(); });
}

size_t UploadHandle::write(py::handle data) {
    auto buf = HeldBuffer::acquire(data, false, u_->context());
    if (buf->size() == 0) return 0;
    if (!u_->write_begin(buf->data(), buf->size())) wait_steps();
    return buf->size();
}

std::string UploadHandle::put(HeldBuffer &buf) {
    u_->put_begin(buf.data(), buf.size());
    wait_steps();
    return u_->etag();
}

std::string UploadHandle::complete() {
    u_->complete_begin();
    wait_steps();
    return u_->etag();
}

void UploadHandle::abort() {
    py::gil_scoped_release nogil;
    u_->abort();
}

HostBuffer::HostBuffer(size_t n) : size_(n) {
    if (n == 0) return;
    // On a huge page where they are enabled (s3torch::fill_alignment); a recently freed
    // block of this size when one is kept (block_cache.h).
    align_ = s3torch::fill_alignment(n, kPageSize);
    data_ = s3torch::take_block(n, align_);
    if (data_ == nullptr) throw std::bad_alloc();
}

HostBuffer::~HostBuffer() { s3torch::give_block(data_, size_, align_); }

py::buffer_info HostBuffer::info() {
    static uint8_t empty = 0;
    return py::buffer_info(data_ ? data_ : &empty, 1, py::format_descriptor<uint8_t>::format(), 1,
                           {static_cast<py::ssize_t>(size_)}, {1}, /*readonly=*/false);
}

void register_handles(py::module_ &m) {
    py::class_<HostBuffer>(m, "HostBuffer", py::buffer_protocol(),
                           "Uninitialised page-aligned host memory (writable buffer protocol).")
        .def(py::init<size_t>(), py::arg("size"))
        .def_buffer(&HostBuffer::info)
        .def("__len__", &HostBuffer::size);
    m.def(
        "kept_host_blocks",
        [] {
            s3torch::KeptBlocks k = s3torch::kept_blocks();
            return py::make_tuple(k.blocks, k.bytes);
        },
        "(blocks, bytes) of freed HostBuffer memory kept for the next HostBuffer of the same size.");
    m.def("drop_kept_host_blocks", &s3torch::drop_kept_blocks, "Free the HostBuffer memory kept for reuse.");
    m.attr("KEPT_HOST_BLOCKS_MAX") = s3torch::kBlockCacheBlocks;
    m.attr("KEPT_HOST_BYTES_MAX") = s3torch::kBlockCacheBytes;
    m.attr("KEPT_HOST_BLOCK_MIN") = s3torch::kBlockCacheMinBytes;

    py::class_<GetHandle>(m, "GetHandle")
        .def("wait", &GetHandle::wait, py::arg("populate") = false,
             "Block (GIL released) until done; returns the bytes received. populate=True: make the "
             "destination's pages resident meanwhile (fresh memory; s3torch._crt.prefault).")
        .def("done", &GetHandle::done)
        .def("cancel", &GetHandle::cancel)
        .def_property_readonly("object_size", &GetHandle::object_size)
        .def_property_readonly("etag", &GetHandle::etag);

    m.def("wait_any", &wait_any, py::arg("handles"), py::arg("timeout") = py::none(),
          "Block (GIL released) until one of the GetHandles has finished, or `timeout` seconds "
          "(None: forever). Returns the index of the first finished one in the list, or None on "
          "timeout. Never raises the transfer's error: wait() on that handle does.");

    py::class_<StreamChunk>(m, "StreamChunk", py::buffer_protocol())
        .def_buffer(&StreamChunk::info)
        .def_property_readonly("offset", &StreamChunk::offset)
        .def("__len__", &StreamChunk::size);

    py::class_<StreamHandle>(m, "GetStream")
        .def("next_chunk", &StreamHandle::next_chunk,
             "The next chunk (a read-only buffer over CRT memory) or None at the end.")
        .def_property_readonly("buffered_bytes", &StreamHandle::buffered_bytes)
        .def_property_readonly("etag", &StreamHandle::etag)
        .def("close", &StreamHandle::close);

    py::class_<UploadHandle>(m, "Upload")
        .def("write", &UploadHandle::write, py::arg("data"))
        .def("complete", &UploadHandle::complete)
        .def("abort", &UploadHandle::abort)
        .def_property_readonly("bytes_written", &UploadHandle::bytes_written)
        .def_property_readonly("closed", &UploadHandle::closed);
}

}  // namespace s3torch_py
