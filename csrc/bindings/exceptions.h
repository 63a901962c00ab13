// The one place where core errors become Python exceptions.
//
//   S3Exception                      base, with .code .http_status .request_id .bucket .key
//   ├── S3NotFoundError              also FileNotFoundError   (NoSuchKey, NoSuchBucket, 404)
//   ├── S3PermissionError            also PermissionError     (403, bad credentials)
//   ├── S3TimeoutError               also TimeoutError
//   ├── S3InvalidArgumentError       also ValueError          (bad config, range, buffer)
//   └── S3CancelledError             the transfer was cancelled (abort, KeyboardInterrupt)
#pragma once

#include <pybind11/pybind11.h>

namespace s3torch_py {

void register_exceptions(pybind11::module_ &m);

}  // namespace s3torch_py
