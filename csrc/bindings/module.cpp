// s3torch._crt: the pybind11 binding of the C++ core. Thin: converts arguments, keeps
// buffers alive, and releases the GIL on every wait. No Python ever runs on CRT threads:
// the core's callbacks only store results; waits happen on the calling thread.
//
// This file is the module definition; each part lives in its own file (bindings.h).
#include "bindings.h"
#include "buffers.h"

#include "s3torch/checksum.h"
#include "s3torch/client.h"
#include "s3torch/credentials.h"
#include "s3torch/crt_compat.h"
#include "s3torch/endpoint_health.h"
#include "s3torch/objects.h"
#include "s3torch/prefault.h"
#include "s3torch/runtime.h"
#include "s3torch/shared_config.h"
#include "s3torch/transpose.h"
#include "s3torch/xml.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <pybind11/stl.h>

namespace py = pybind11;

namespace {

// `name` as a CrcAlgorithm, else S3InvalidArgumentError naming the function `op`.
s3torch::CrcAlgorithm crc_algorithm(const char *op, const std::string &name) {
    s3torch::CrcAlgorithm a;
    if (!s3torch::parse_crc_algorithm(name, a))
        s3torch::throw_invalid(
            std::string(op) + ": algorithm must be crc32, crc32c or crc64nvme, got '" + name.substr(0, 32) + "'",
            {op, "", ""});
    return a;
}

}  // namespace

PYBIND11_MODULE(_crt, m) {
    m.doc() = "s3torch native core: aws-c-s3 transfers into and out of caller memory.";
    s3torch_py::register_exceptions(m);
    s3torch_py::register_config(m);
    s3torch_py::register_handles(m);
    s3torch_py::register_bytes_get(m);
    s3torch_py::register_bytes_put(m);
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
        "prefault",
        [](py::handle data, bool write_fallback) {
            auto buf = s3torch_py::HeldBuffer::acquire(data, true, {"prefault", "", ""});
            py::gil_scoped_release nogil;
            return s3torch::prefault(buf->data(), buf->size(), write_fallback);
        },
        py::arg("data"), py::arg("write_fallback") = true,
        "Make a writable buffer's (or CPU tensor's) pages resident now, so later writes into it take no "
        "page faults; contents unchanged. Where the kernel cannot populate (before Linux 5.14) it writes "
        "one byte of each page back, so only for memory no other thread uses yet; with "
        "write_fallback=False it does nothing there instead (returns False), and is safe on memory a "
        "GET is landing in. GIL released.");
    m.def(
        "looks_resident",
        [](py::handle data) {
            auto buf = s3torch_py::HeldBuffer::acquire(data, false, {"looks_resident", "", ""});
            py::gil_scoped_release nogil;
            return s3torch::looks_resident(buf->data(), buf->size());
        },
        py::arg("data"),
        "Whether a buffer's (or CPU tensor's) first, middle and last pages are resident (mincore): memory "
        "in use already, which prefault would only walk. False for an empty buffer. GIL released.");
    m.def(
        "advise_huge_pages",
        [](py::handle data) {
            auto buf = s3torch_py::HeldBuffer::acquire(data, true, {"advise_huge_pages", "", ""});
            py::gil_scoped_release nogil;
            return s3torch::advise_huge_pages(buf->data(), buf->size());
        },
        py::arg("data"),
        "Ask the kernel for transparent huge pages (MADV_HUGEPAGE) on the whole huge pages inside a "
        "writable buffer (or CPU tensor) about to be made resident and filled, where huge_pages_enabled(). "
        "Returns whether advice was given; never raises for the setting. GIL released.");
    m.def(
        "xml_can_carry",
        [](const std::string &text) {
            std::string scratch;
            return s3torch::xml_escape(text, scratch);
        },
        py::arg("text"),
        "Whether `text` can go in an XML request body (a key of a DeleteObjects): UTF-8 without C0 controls but tab, "
        "line feed and carriage return, nor U+FFFE/U+FFFF. S3 keys may hold what it cannot.");
    m.def("huge_page_bytes", &s3torch::huge_page_bytes,
          "This machine's transparent huge page size (hpage_pmd_size), or 0 where the kernel has none.");
    m.def("huge_pages_enabled", &s3torch::huge_pages_enabled,
          "Whether advise_huge_pages gives advice: S3TORCH_HUGE_PAGES=1 (off by default). A malformed value "
          "raises S3InvalidArgumentError.");
    m.def("event_loop_threads", &s3torch::event_loop_threads,
          "How many event-loop threads this process's CRT runtime runs (or will run, when it is built): "
          "S3TORCH_EVENT_LOOP_THREADS if set, else half the cores but at least two on a machine with two or "
          "more.");
    m.attr("POPULATE_CHUNK_BYTES") = s3torch::kPopulateChunkBytes;
    m.attr("POPULATE_MIN_BYTES") = s3torch::kPopulateMinBytes;
    m.def(
        "checksum",
        [](const std::string &algorithm, py::handle data, uint64_t previous) {
            const s3torch::CrcAlgorithm a = crc_algorithm("checksum", algorithm);
            auto buf = s3torch_py::HeldBuffer::acquire(data, false, {"checksum", "", ""});
            py::gil_scoped_release nogil;
            return s3torch::crc(a, buf->data(), buf->size(), previous);
        },
        py::arg("algorithm"), py::arg("data"), py::arg("previous") = 0,
        "The CRC S3 names `algorithm` (crc32, crc32c, crc64nvme) of a buffer or tensor, continuing `previous`; "
        "GIL released.");
    m.def(
        "checksum_combine",
        [](const std::string &algorithm, uint64_t crc_a, uint64_t crc_b, uint64_t len_b) {
            return s3torch::crc_combine(crc_algorithm("checksum_combine", algorithm), crc_a, crc_b, len_b);
        },
        py::arg("algorithm"), py::arg("crc_a"), py::arg("crc_b"), py::arg("len_b"),
        "The CRC of A followed by B from checksum(A), checksum(B) and len(B).");
    m.def(
        "transpose_copy",
        [](py::handle dst, py::handle src, size_t rows, size_t cols, size_t itemsize, size_t dst_ld,
           std::optional<uint32_t> crc32) -> std::optional<uint32_t> {
            const s3torch::ErrorContext ctx{"transpose_copy", "", ""};
            if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8 && itemsize != 16)
                s3torch::throw_invalid(
                    "transpose_copy: itemsize must be 1, 2, 4, 8 or 16, got " + std::to_string(itemsize), ctx);
            if (rows != 0 && dst_ld < rows) s3torch::throw_invalid("transpose_copy: dst_ld is below rows", ctx);
            auto out = s3torch_py::HeldBuffer::acquire(dst, true, ctx);
            auto in = s3torch_py::HeldBuffer::acquire(src, false, ctx);
            if (rows == 0 || cols == 0) return crc32;
            // Checked in elements first: no product below can overflow once these hold.
            const size_t max_elems = SIZE_MAX / itemsize;
            if (cols > max_elems / rows || in->size() < rows * cols * itemsize)
                s3torch::throw_invalid("transpose_copy: the source is smaller than rows x cols", ctx);
            if (cols - 1 > (max_elems - rows) / dst_ld || out->size() < ((cols - 1) * dst_ld + rows) * itemsize)
                s3torch::throw_invalid("transpose_copy: the destination is smaller than the transposed span", ctx);
            const char *o = static_cast<const char *>(out->data());
            const char *i = static_cast<const char *>(in->data());
            if (o < i + in->size() && i < o + out->size())
                s3torch::throw_invalid("transpose_copy: source and destination overlap", ctx);
            py::gil_scoped_release nogil;
            s3torch::transpose_copy(out->data(), in->data(), rows, cols, itemsize, dst_ld, crc32 ? &*crc32 : nullptr);
            return crc32;
        },
        py::arg("dst"), py::arg("src"), py::arg("rows"), py::arg("cols"), py::arg("itemsize"), py::arg("dst_ld"),
        py::arg("crc32") = py::none(),
        "dst[c * dst_ld + r] = src[r * cols + c] (elements of itemsize bytes), in cache-sized tiles; "
        "GIL released. Both are contiguous CPU buffers (or tensors); sizes are checked. With crc32 "
        "(0 to start), returns the CRC32 of the source's rows x cols elements continuing it, computed "
        "as the copy reads them; else None.");
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
    m.def(
        "upload_checksums",
        [](const std::string &profile) {
            return s3torch::checksums_as_boto3_reads_them(s3torch::SharedConfig(profile));
        },
        py::arg("profile"),
        "(checksums, where from) a client given `profile` and no checksums= uses: boto3's "
        "request_checksum_calculation ($AWS_REQUEST_CHECKSUM_CALCULATION, else the profile's).");
    m.def(
        "ca_bundle",
        [](const std::string &profile) { return s3torch::ca_bundle_as_boto3_reads_it(s3torch::SharedConfig(profile)); },
        py::arg("profile"),
        "(CA file, where from) a client given `profile` and no ca_file= trusts: $AWS_CA_BUNDLE, else the "
        "profile's ca_bundle; ('', '') for the system's.");
    m.def(
        "profile_in_use",
        [](const std::string &profile) {
            s3torch::SharedConfig shared(profile);
            std::string source = s3torch::profile_source(profile);
            if (source.empty()) source = profile.empty() ? "default" : "given";
            return std::map<std::string, std::string>{
                {"name", shared.profile_name()},  {"source", source},
                {"config_file", shared.path()},   {"credentials_file", shared.credentials_path()},
                {"region", shared.get("region")}, {"sso", s3torch::signs_in_with_sso(shared) ? "yes" : ""}};
        },
        py::arg("profile"),
        "The profile a client given `profile` ('' for none) uses: {name, source ('given', '$AWS_DEFAULT_PROFILE', "
        "'$AWS_PROFILE' or 'default'), config_file, credentials_file, region (the profile's region in the config "
        "file, '' when it has none), sso ('yes' when it signs in through IAM Identity Center, else '')}.");
    m.attr("AWSCRT_VERSION") = s3torch::crt_compat::awscrt_version();
    m.attr("MAX_THROUGHPUT_GBPS") = s3torch::kMaxThroughputGbps;
    m.attr("MAX_UPLOAD_PARTS") = s3torch::kMaxObjectParts;  // S3's most parts in one multipart upload
    m.attr("MAX_DELETE_KEYS") = s3torch::kMaxDeleteKeys;    // S3's most keys in one DeleteObjects
}
