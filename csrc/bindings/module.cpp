// s3torch._crt: the pybind11 binding of the C++ core. Thin: converts arguments, keeps
// buffers alive, and releases the GIL on every wait. No Python ever runs on CRT threads:
// the core's callbacks only store results; waits happen on the calling thread.
//
// This file is the module definition; each part lives in its own file (bindings.h).
#include "bindings.h"
#include "buffers.h"

#include "s3torch/checksum.h"
#include "s3torch/client.h"
#include "s3torch/crt_compat.h"

namespace py = pybind11;

PYBIND11_MODULE(_crt, m) {
    m.doc() = "s3torch native core: aws-c-s3 transfers into and out of caller memory.";
    s3torch_py::register_exceptions(m);
    s3torch_py::register_config(m);
    s3torch_py::register_handles(m);
    s3torch_py::register_client(m);

    m.def(
        "crc32",
        [](py::handle data, uint32_t previous) {
            auto buf = s3torch_py::HeldBuffer::acquire(data, false, {"crc32", "", ""});
            py::gil_scoped_release nogil;
            return s3torch::crc32(buf->data(), buf->size(), previous);
        },
        py::arg("data"), py::arg("previous") = 0,
        "CRC32 (zip polynomial) of a buffer or tensor, hardware-accelerated; GIL released.");
    m.def(
        "prepare_fork",
        [] {
            py::gil_scoped_release nogil;
            return s3torch::Client::prepare_fork();
        },
        "Release every client's CRT resources and stop CRT threads (before fork). False if transfers are in "
        "flight, in which case nothing is stopped.");
    m.attr("AWSCRT_VERSION") = s3torch::crt_compat::awscrt_version();
}
