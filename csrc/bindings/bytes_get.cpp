#include "bytes_get.h"

#include "bindings.h"
#include "handles.h"

#include "s3torch/prefault.h"

#include <pybind11/stl.h>

#include <vector>

namespace s3torch_py {

using namespace s3torch;

namespace {

// Whole-object reads of an object replaced between their probe and their rest: how many tries.
constexpr int kWholeAttempts = 3;

py::bytes steal_bytes(py::object &holder) { return py::reinterpret_steal<py::bytes>(holder.release()); }

// A new bytes object of `n` bytes, not yet filled; `*dst` points at its storage.
py::object new_bytes(uint64_t n, char **dst, const ErrorContext &ctx) {
    // A size from a server's answer (Content-Range, Content-Length): one past what a bytes
    // object can hold is no object's, and Python would say only SystemError.
    if (n > static_cast<uint64_t>(PY_SSIZE_T_MAX))
        throw S3Error(ErrorKind::Generic,
                      describe(ctx) + ": the server gives the object a size of " + std::to_string(n) +
                          " bytes, more than any object has",
                      ctx);
    PyObject *raw = PyBytes_FromStringAndSize(nullptr, static_cast<py::ssize_t>(n));
    if (!raw) throw py::error_already_set();
    *dst = PyBytes_AS_STRING(raw);
    return py::reinterpret_steal<py::object>(raw);
}

}  // namespace

BytesGet::BytesGet(std::shared_ptr<Client> client, const std::string &bucket, const std::string &key,
                   const std::string &if_match)
    : client_(std::move(client)), ctx_{"GetObject", bucket, key}, if_match_(if_match) {}

std::unique_ptr<BytesGet> BytesGet::whole(std::shared_ptr<Client> client, const std::string &bucket,
                                          const std::string &key, const std::string &if_match) {
    std::unique_ptr<BytesGet> op(new BytesGet(std::move(client), bucket, key, if_match));
    op->start_probe();
    return op;
}

std::unique_ptr<BytesGet> BytesGet::range(std::shared_ptr<Client> client, const std::string &bucket,
                                          const std::string &key, uint64_t offset, uint64_t n, bool to_end,
                                          const std::string &if_match) {
    std::unique_ptr<BytesGet> op(new BytesGet(std::move(client), bucket, key, if_match));
    op->offset_ = offset;
    op->to_end_ = to_end;
    op->start_range(n);
    return op;
}

BytesGet::~BytesGet() {
    // The CRT may still write into holder_: let it go first (WholeObjectGet's destructor
    // cancels and waits for its requests itself).
    py::gil_scoped_release nogil;
    if (get_) get_->cancel_and_wait();
    whole_.reset();
}

void BytesGet::start_probe() {
    {
        py::gil_scoped_release nogil;
        whole_.reset();  // a finished read (a retry): nothing writes into holder_ any more
        whole_ = std::make_unique<WholeObjectGet>(client_, ctx_.bucket, ctx_.key, if_match_);
    }
    holder_ = py::object();
    in_rest_ = false;
    cur_ = &whole_->probe();
    fresh_ = {nullptr, 0};  // the probe's own scratch
    arm();
}

void BytesGet::start_range(uint64_t n) {
    n_ = n;
    char *dst = nullptr;
    holder_ = new_bytes(n, &dst, ctx_);
    {
        py::gil_scoped_release nogil;
        get_ = GetInto::start_get(client_, ctx_.bucket, ctx_.key, ByteRange{offset_, n}, dst, n, if_match_);
    }
    cur_ = get_.get();
    fresh_ = {dst, n};
    arm();
}

void BytesGet::arm() {
    if (pipe_) cur_->notify_when_finished(pipe_, token_);
}

void BytesGet::notify(std::shared_ptr<CompletionPipe> pipe, uint64_t token) {
    pipe_ = std::move(pipe);
    token_ = token;
    arm();
}

void BytesGet::populate() {
    auto fresh = fresh_;
    fresh_ = {nullptr, 0};
    if (!fresh.second) return;
    // Held while the GIL is released: the loop's thread may step (and drop) this read meanwhile.
    std::shared_ptr<Transfer> t = cur_->shared_from_this();
    py::object memory = holder_;
    // The waiting thread would only wait; the pages would otherwise each fault inside the
    // event-loop thread copying the bytes in (prefault.h).
    py::gil_scoped_release nogil;
    populate_while(fresh.first, fresh.second, [&t] { return !t->done(); });
}

bool BytesGet::wants_populate() const { return fresh_.second >= kPopulateMinBytes; }

bool BytesGet::heavy_next() {
    if (!whole_ || in_rest_ || !cur_->done()) return false;
    try {
        return whole_->size() > whole_->first_size();
    } catch (const S3Error &) {
        return false;  // the probe failed: step() raises it
    }
}

std::optional<py::bytes> BytesGet::step_whole() {
    if (!in_rest_) {
        uint64_t size = whole_->size();
        size_t first = whole_->first_size();
        if (size <= first) return py::bytes(reinterpret_cast<const char *>(whole_->first()), size);
        char *dst = nullptr;
        holder_ = new_bytes(size, &dst, ctx_);
        Transfer *rest;
        {
            py::gil_scoped_release nogil;
            rest = &whole_->start_rest(dst);
        }
        cur_ = rest;  // with the GIL held: cancel() may read it from another thread
        in_rest_ = true;
        fresh_ = {dst + first, size - first};
        arm();
        return std::nullopt;
    }
    whole_->finish();
    return steal_bytes(holder_);
}

std::optional<py::bytes> BytesGet::step() {
    if (whole_) {
        try {
            return step_whole();
        } catch (const S3Error &e) {
            if (e.kind != ErrorKind::ObjectChanged || !if_match_.empty() || attempt_ >= kWholeAttempts) throw;
        }
        ++attempt_;
        start_probe();
        return std::nullopt;
    }
    get_->raise_if_failed();
    if (to_end_) {  // to the end, of a size a hint (or a HEAD before the GET) gave
        to_end_ = false;
        uint64_t size = get_->object_size();
        // Once: the length now comes from the answer, of the version it was (If-Match).
        if (size != 0 && size != n_ + offset_) {
            if (size <= offset_) return py::bytes();
            if_match_ = get_->etag();
            start_range(size - offset_);
            return std::nullopt;
        }
    }
    size_t got = get_->bytes_received();
    if (got != n_) {
        PyObject *obj = holder_.release().ptr();
        if (_PyBytes_Resize(&obj, static_cast<py::ssize_t>(got)) != 0) throw py::error_already_set();
        holder_ = py::reinterpret_steal<py::object>(obj);
    }
    return steal_bytes(holder_);
}

py::bytes run_to_end(BytesGet &op) {
    for (;;) {
        op.populate();
        wait_transfer(op.current());
        if (auto bytes = op.step()) return std::move(*bytes);
    }
}

void register_bytes_get(py::module_ &m) {
    py::class_<CompletionPipe, std::shared_ptr<CompletionPipe>>(
        m, "CompletionPipe",
        "An eventfd an event loop watches, readable once a transfer told of it (BytesGet.notify) "
        "has finished; take() gives their tokens.")
        .def(py::init<>())
        .def_property_readonly("fd", &CompletionPipe::fd)
        .def("take", &CompletionPipe::take);
    py::class_<BytesGet>(m, "BytesGet",
                         "A GET into a new bytes object, in steps (NativeClient.start_bytes): after each "
                         "notification, step() gives the bytes or None (the next request started).")
        .def("step", &BytesGet::step)
        .def("notify", &BytesGet::notify, py::arg("pipe"), py::arg("token"))
        .def("cancel", &BytesGet::cancel)
        .def("populate", &BytesGet::populate)
        .def("wants_populate", &BytesGet::wants_populate)
        .def("heavy_next", &BytesGet::heavy_next)
        .def("detach", &BytesGet::detach)
        .def("result", &run_to_end, "Drive the read to its bytes on this thread (GIL released while waiting).");
}

}  // namespace s3torch_py
