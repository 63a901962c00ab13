#include "bytes_put.h"

#include "bindings.h"

#include "s3torch/client.h"

namespace s3torch_py {

using namespace s3torch;

std::unique_ptr<BytesPut> BytesPut::start(std::shared_ptr<Client> client, const std::string &bucket,
                                          const std::string &key, py::handle data, bool exclusive) {
    std::unique_ptr<BytesPut> op(new BytesPut());
    op->data_ = HeldBuffer::acquire(data, false, {"PutObject", bucket, key});
    if (!fits_one_put(client->config(), op->data_->size())) return nullptr;
    PutOptions opts;
    opts.if_none_match = exclusive;
    py::gil_scoped_release nogil;
    op->upload_ = std::make_unique<Upload>(std::move(client), bucket, key, opts);
    op->upload_->put_begin(op->data_->data(), op->data_->size());
    return op;
}

BytesPut::~BytesPut() {
    if (upload_ && !upload_->closed()) {
        py::gil_scoped_release nogil;
        upload_->abort();
    }
}

std::string BytesPut::step() {
    // Finished: completes at once (a create-only write whose committing attempt got no answer
    // asks the server, with a HEAD, whether the object there is its own).
    py::gil_scoped_release nogil;
    upload_->wait_step(-1);
    return upload_->etag();
}

void BytesPut::notify(std::shared_ptr<CompletionPipe> pipe, uint64_t token) {
    upload_->single_put()->notify_when_finished(std::move(pipe), token);
}

void BytesPut::cancel() {
    py::gil_scoped_release nogil;
    upload_->abort();
}

void register_bytes_put(py::module_ &m) {
    py::class_<BytesPut>(m, "BytesPut",
                         "A PUT of at most a part from a buffer (NativeClient.start_put), for an event loop: "
                         "after its notification, step() completes it and gives its ETag.")
        .def("step", &BytesPut::step)
        .def("notify", &BytesPut::notify, py::arg("pipe"), py::arg("token"))
        .def("cancel", &BytesPut::cancel)
        .def("wants_populate", [](BytesPut &) { return false; })  // reads only (BytesGet's)
        .def("heavy_next", [](BytesPut &) { return false; });
}

}  // namespace s3torch_py
