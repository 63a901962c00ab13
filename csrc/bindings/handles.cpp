#include "handles.h"

#include "s3torch/endpoint_health.h"

#include <cstdlib>
#include <new>
#include <string>
#include <vector>

namespace s3torch_py {

namespace {

// How long a wait holds off signal checks (KeyboardInterrupt is noticed within this).
constexpr int64_t kWaitSliceMs = 100;
constexpr size_t kPageSize = 4096;  // HostBuffer's alignment

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

void wait_transfer(s3torch::Transfer &t) {
    wait_interruptible([&](int64_t ms) { return t.wait_for(ms); }, [&] { t.cancel_and_wait(); });
}

GetHandle::~GetHandle() {
    if (t_ && !t_->done()) {
        py::gil_scoped_release nogil;
        t_->cancel_and_wait();
    }
}

size_t GetHandle::wait() {
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
    void *p = nullptr;
    if (posix_memalign(&p, kPageSize, n) != 0) throw std::bad_alloc();
    data_ = p;
}

HostBuffer::~HostBuffer() { std::free(data_); }

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

    py::class_<GetHandle>(m, "GetHandle")
        .def("wait", &GetHandle::wait, "Block (GIL released) until done; returns the bytes received.")
        .def("done", &GetHandle::done)
        .def("cancel", &GetHandle::cancel)
        .def_property_readonly("object_size", &GetHandle::object_size)
        .def_property_readonly("etag", &GetHandle::etag);

    py::class_<StreamChunk>(m, "StreamChunk", py::buffer_protocol())
        .def_buffer(&StreamChunk::info)
        .def_property_readonly("offset", &StreamChunk::offset)
        .def("__len__", &StreamChunk::size);

    py::class_<StreamHandle>(m, "GetStream")
        .def("next_chunk", &StreamHandle::next_chunk,
             "The next chunk (a read-only buffer over CRT memory) or None at the end.")
        .def_property_readonly("buffered_bytes", &StreamHandle::buffered_bytes)
        .def("close", &StreamHandle::close);

    py::class_<UploadHandle>(m, "Upload")
        .def("write", &UploadHandle::write, py::arg("data"))
        .def("complete", &UploadHandle::complete)
        .def("abort", &UploadHandle::abort)
        .def_property_readonly("bytes_written", &UploadHandle::bytes_written)
        .def_property_readonly("closed", &UploadHandle::closed);
}

}  // namespace s3torch_py
