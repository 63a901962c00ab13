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
#include "s3torch/endpoint_health.h"

#include <pybind11/stl.h>

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
    m.def("crc32_implementation", &s3torch::crc32_implementation,
          "Which path crc32 takes on this CPU: 'pclmul' (x86_64), 'armv8-crc' (aarch64) or 'portable'.");
    m.def(
        "prepare_fork",
        [] {
            py::gil_scoped_release nogil;
            return s3torch::Client::prepare_fork();
        },
        "Release every client's CRT resources and stop CRT threads (before fork). False if transfers are in "
        "flight, in which case nothing is stopped.");
    m.def("answered_endpoints", &s3torch::answered_endpoints,
          "Endpoints ('scheme://host[:port]') that have answered in this process (carried in pickles).");
    m.def("mark_answered", &s3torch::mark_answered, py::arg("endpoints"),
          "Mark endpoints as known to be right (they answered in the process that pickled an object).");
    m.def("retry_status", &s3torch::retry_status,
          "A short status of the request that has retried longest ('retrying 12 s: SlowDown (HTTP 503)'), or ''.");
    m.def("take_retry_reports", &s3torch::take_retry_reports,
          "Retry report lines due now (waits log them on the 's3torch' logger themselves).");
    m.attr("AWSCRT_VERSION") = s3torch::crt_compat::awscrt_version();
    m.attr("MAX_THROUGHPUT_GBPS") = s3torch::kMaxThroughputGbps;
}
