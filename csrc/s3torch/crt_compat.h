// Every reach into the AWS CRT beyond its public, documented API, in one place.
//
// Each function here depends on an internal of the pinned awscrt release (cmake/crt_cache.py,
// AWSCRT_VERSION): a private aws-c-common function, the shape of a request path the CRT builds,
// a library-wide global. crt_compat.cpp refuses to compile against any other awscrt version
// (static_assert against the version CMake reads from the pin), so a CRT upgrade has to come
// here, re-check each item against the new sources and update kWrittenForAwscrt.
#pragma once

#include <cstddef>
#include <string>

struct aws_s3_request_metrics;

namespace s3torch::crt_compat {

// The awscrt release whose CRT sources the functions below were checked against.
inline constexpr const char kWrittenForAwscrt[] = "0.38.1";
// The awscrt release this build uses (from cmake/crt_cache.py, via CMake).
const char *awscrt_version();

// Channel messages (socket reads and writes) of `bytes` instead of the CRT's 16 KiB, through
// aws-c-io's global g_aws_channel_max_fragment_size. Process-wide; our CRT copy is private to
// this module (its symbols are hidden), so no other CRT user in the process is affected.
void set_channel_max_fragment_size(size_t bytes);

// In a fork()ed child holding a runtime inherited from its parent (whose threads do not exist
// here): make aws-c-common forget the parent's threads. Its list of finished threads awaiting a
// join would otherwise be joined by the next CRT thread to exit here (pthread_join on a thread
// of another process: a crash), and its count of live ones would make joining all threads wait
// forever. Uses aws_thread_initialize_thread_management / aws_thread_get_managed_thread_count,
// which aws-c-common exports but does not declare in a public header. Call before any CRT
// thread exists in this process.
void forget_inherited_threads();

// The multipart upload id that an UploadPart request of `metrics` carries in its query
// ("...?partNumber=N&uploadId=<id>"), URI-encoded as sent; "" if the request has none.
// aws-c-s3 offers the id only through a resume token on failure; reading it from the request
// path relies on the query it builds for UploadPart.
std::string upload_id_from_metrics(aws_s3_request_metrics *metrics);

// Whether the request of `metrics` is a multipart upload's CompleteMultipartUpload: its query
// carries the upload id and no part number ("...?uploadId=<id>"), as aws-c-s3 builds it (an
// AbortMultipartUpload does too, sent only once the upload has failed).
bool completes_multipart_upload(aws_s3_request_metrics *metrics);

}  // namespace s3torch::crt_compat
