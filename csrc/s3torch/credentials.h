// Credentials providers from a ClientConfig.
#pragma once

#include "s3torch/config.h"

struct aws_credentials_provider;
struct aws_client_bootstrap;
struct aws_tls_ctx;

namespace s3torch {

// A new provider (caller owns one reference). Throws S3Error on failure, e.g. a named profile
// that does not exist.
aws_credentials_provider *make_credentials_provider(const ClientConfig &cfg, aws_client_bootstrap *bootstrap,
                                                    aws_tls_ctx *tls_ctx);

}  // namespace s3torch
