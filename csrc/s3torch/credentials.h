// Credentials providers from a ClientConfig.
#pragma once

#include "s3torch/config.h"

#include <aws/auth/credentials.h>

#include <cstdint>
#include <string>

struct aws_credentials_provider;
struct aws_client_bootstrap;
struct aws_tls_ctx;

namespace s3torch {

// How long the default chain keeps credentials that carry no expiry before asking again (the
// CRT's own chain: 15 minutes).
constexpr uint64_t kCredentialsRefreshMs = 15 * 60 * 1000;

class SharedConfig;

// Whether the profile signs in through AWS IAM Identity Center (SSO, `aws sso login`): an
// sso_session, or the legacy sso_start_url. Such a profile's credentials come from the CRT's SSO
// provider.
bool signs_in_with_sso(const SharedConfig &shared);

// A new provider (caller owns one reference). Throws S3Error on failure, e.g. a named profile
// that does not exist.
aws_credentials_provider *make_credentials_provider(const ClientConfig &cfg, aws_client_bootstrap *bootstrap,
                                                    aws_tls_ctx *tls_ctx);

// A provider of our own (the CRT's delegate provider): `get_credentials(user_data, ...)` answers
// each fetch, and `gone(user_data)` runs once the provider is destroyed. nullptr when it cannot
// be made; `gone` is not called then (the caller frees `user_data`).
aws_credentials_provider *new_delegate_provider(aws_credentials_provider_delegate_get_credentials_fn *get_credentials,
                                                void *user_data, void (*gone)(void *));

// What to add to the error of a request whose signing failed (no credentials): where they were
// looked for, the profile and its files by name; for a profile that signs in through AWS IAM
// Identity Center (SSO: sso_session or sso_start_url in the config file), which the CRT's
// providers cannot read, how to export its credentials instead. "" when the credentials are
// not the default chain's or a profile's. Reads the config file: for this error only.
std::string credentials_hint(const ClientConfig &cfg);

}  // namespace s3torch
