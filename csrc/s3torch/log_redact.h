// The CRT's log lines (S3TORCH_CRT_LOG) without secrets: aws-c-auth logs each SigV4 canonical
// request at INFO, session token and SSE-C key included. A logger that wraps the CRT's standard one masks
// it before a line is written.
#pragma once

#include <string>

struct aws_allocator;
struct aws_logger;

namespace s3torch {

// `text` with the value of every x-amz-security-token, x-amz-server-side-encryption-customer-key
// and x-amz-copy-source-server-side-encryption-customer-key (header "name:value" or
// "name: value", query "name=value", any case) replaced by "***".
std::string redact_log_text(const std::string &text);

// Make `logger` (uninitialized) forward every line, redacted, to `inner` (initialized), which
// it owns from then on.
void init_redacting_logger(aws_logger *logger, aws_logger *inner, aws_allocator *alloc);

}  // namespace s3torch
