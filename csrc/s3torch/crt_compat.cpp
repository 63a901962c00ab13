#include "s3torch/crt_compat.h"

#include <aws/common/string.h>
#include <aws/common/thread.h>
#include <aws/io/channel.h>
#include <aws/s3/s3_client.h>

#include <string_view>

#ifndef S3TORCH_AWSCRT_VERSION
#error "S3TORCH_AWSCRT_VERSION must be defined by the build (CMakeLists.txt reads it from cmake/crt_cache.py)"
#endif

static_assert(std::string_view(S3TORCH_AWSCRT_VERSION) == std::string_view(s3torch::crt_compat::kWrittenForAwscrt),
              "cmake/crt_cache.py pins an awscrt release other than the one csrc/s3torch/crt_compat.cpp was written "
              "for: re-check every function in this file against the new CRT sources, then update "
              "kWrittenForAwscrt");

// Exported by aws-c-common (source/thread_shared.c) but not declared in a public header.
extern "C" {
void aws_thread_initialize_thread_management(void);
size_t aws_thread_get_managed_thread_count(void);
}

namespace s3torch::crt_compat {

const char *awscrt_version() { return S3TORCH_AWSCRT_VERSION; }

void set_channel_max_fragment_size(size_t bytes) { g_aws_channel_max_fragment_size = bytes; }

void forget_inherited_threads() {
    aws_thread_initialize_thread_management();  // empties the pending-join list (leaks it)
    for (size_t n = aws_thread_get_managed_thread_count(); n > 0; --n) aws_thread_decrement_unjoined_count();
}

namespace {

// The path and query of the request of `metrics` (valid while the metrics are), "" if none.
std::string_view path_query_of(aws_s3_request_metrics *metrics) {
    const aws_string *path_query = nullptr;
    aws_s3_request_metrics_get_request_path_query(metrics, &path_query);
    if (!path_query) return {};
    return std::string_view(reinterpret_cast<const char *>(aws_string_bytes(path_query)), path_query->len);
}

// Where the value of the query parameter `param` ("name=") starts in `q`, or npos. Only a
// whole parameter counts: at the start of the query or after '?' or '&'.
size_t param_at(std::string_view q, std::string_view param) {
    size_t at = q.find(param);
    if (at == std::string_view::npos) return at;
    if (at > 0 && q[at - 1] != '?' && q[at - 1] != '&') return std::string_view::npos;
    return at + param.size();
}

}  // namespace

std::string upload_id_from_metrics(aws_s3_request_metrics *metrics) {
    std::string_view q = path_query_of(metrics);
    size_t at = param_at(q, "uploadId=");
    if (at == std::string_view::npos) return std::string();
    q.remove_prefix(at);
    return std::string(q.substr(0, q.find('&')));
}

bool completes_multipart_upload(aws_s3_request_metrics *metrics) {
    std::string_view q = path_query_of(metrics);
    return param_at(q, "uploadId=") != std::string_view::npos && param_at(q, "partNumber=") == std::string_view::npos;
}

}  // namespace s3torch::crt_compat
