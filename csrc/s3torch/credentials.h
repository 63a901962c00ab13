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

// The name of the profile `cfg`'s credentials come from (`profile`, else $AWS_PROFILE, else
// "default") when that profile signs in through AWS IAM Identity Center (SSO: sso_session or
// sso_start_url in the config file), which the CRT's providers cannot read; "" otherwise (or
// when the credentials are not a profile's). Reads the config file: for the error a failed
// signing raises, not on every request.
std::string sso_profile(const ClientConfig &cfg);

// What to add to that error.
std::string sso_hint(const std::string &profile);

}  // namespace s3torch
