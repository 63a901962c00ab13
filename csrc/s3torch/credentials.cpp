#include "s3torch/credentials.h"

#include "s3torch/errors.h"
#include "s3torch/shared_config.h"

#include <aws/auth/credentials.h>
#include <aws/common/byte_buf.h>

namespace s3torch {

aws_credentials_provider *make_credentials_provider(const ClientConfig &cfg, aws_client_bootstrap *bootstrap,
                                                    aws_tls_ctx *tls_ctx) {
    aws_allocator *alloc = aws_default_allocator();
    aws_credentials_provider *provider = nullptr;
    switch (cfg.credentials_kind()) {
        case CredentialsKind::Static: {
            aws_credentials_provider_static_options o;
            AWS_ZERO_STRUCT(o);
            o.access_key_id = aws_byte_cursor_from_array(cfg.access_key_id.data(), cfg.access_key_id.size());
            o.secret_access_key =
                aws_byte_cursor_from_array(cfg.secret_access_key.data(), cfg.secret_access_key.size());
            o.session_token = aws_byte_cursor_from_array(cfg.session_token.data(), cfg.session_token.size());
            provider = aws_credentials_provider_new_static(alloc, &o);
            break;
        }
        case CredentialsKind::Anonymous: {
            aws_credentials_provider_shutdown_options o;
            AWS_ZERO_STRUCT(o);
            provider = aws_credentials_provider_new_anonymous(alloc, &o);
            break;
        }
        case CredentialsKind::Environment: {
            aws_credentials_provider_environment_options o;
            AWS_ZERO_STRUCT(o);
            provider = aws_credentials_provider_new_environment(alloc, &o);
            break;
        }
        case CredentialsKind::Profile: {
            aws_credentials_provider_profile_options o;
            AWS_ZERO_STRUCT(o);
            o.profile_name_override = aws_byte_cursor_from_array(cfg.profile.data(), cfg.profile.size());
            o.bootstrap = bootstrap;
            o.tls_ctx = tls_ctx;
            provider = aws_credentials_provider_new_profile(alloc, &o);
            if (!provider)
                throw_invalid("cannot load AWS profile '" + cfg.profile +
                              "' from ~/.aws/credentials or ~/.aws/config (or AWS_SHARED_CREDENTIALS_FILE / "
                              "AWS_CONFIG_FILE): does it exist and have keys?");
            break;
        }
        case CredentialsKind::Default: {
            aws_credentials_provider_chain_default_options o;
            AWS_ZERO_STRUCT(o);
            o.bootstrap = bootstrap;
            o.tls_ctx = tls_ctx;
            // Only a profile named (given, or $AWS_DEFAULT_PROFILE) overrides: the CRT takes any
            // cursor with a pointer, an empty one included, as the profile's name, and then
            // never reads $AWS_PROFILE or "default" (keys in ~/.aws/credentials were not found).
            const std::string profile = profile_override(cfg.profile);
            if (!profile.empty()) o.profile_name_override = aws_byte_cursor_from_array(profile.data(), profile.size());
            provider = aws_credentials_provider_new_chain_default(alloc, &o);
            break;
        }
    }
    if (!provider) throw error_from_crt(aws_last_error(), {"CreateCredentialsProvider", "", ""});
    return provider;
}

namespace {

std::string sso_hint(const std::string &profile) {
    return "profile '" + profile +
           "' signs in through AWS IAM Identity Center (SSO), which s3torch's credential providers (the AWS "
           "CRT's) cannot use; export its temporary credentials first: eval \"$(aws configure export-credentials "
           "--profile " +
           profile + " --format env)\"";
}

}  // namespace

std::string credentials_hint(const ClientConfig &cfg) {
    CredentialsKind kind = cfg.credentials_kind();
    if (kind != CredentialsKind::Default && kind != CredentialsKind::Profile) return "";
    SharedConfig shared(cfg.profile);
    for (const char *property : {"sso_session", "sso_start_url"})
        if (!shared.get(property).empty()) return sso_hint(shared.profile_name());
    const std::string source = profile_source(cfg.profile);
    std::string which = source.empty() ? "" : " (from " + source + ")";
    std::string profile = "profile '" + shared.profile_name() + "'" + which + " in " + shared.credentials_path() +
                          " and " + shared.path();
    if (kind == CredentialsKind::Profile) return "they were looked for in " + profile;
    return "the default chain found none: it looks in the environment (AWS_ACCESS_KEY_ID, "
           "AWS_SECRET_ACCESS_KEY), " +
           profile +
           ", then web identity, container and instance credentials (S3TORCH_CRT_LOG=error logs why each "
           "had none)";
}

}  // namespace s3torch
