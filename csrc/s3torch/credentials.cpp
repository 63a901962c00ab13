#include "s3torch/credentials.h"

#include "s3torch/errors.h"
#include "s3torch/request.h"
#include "s3torch/retrying_credentials.h"
#include "s3torch/shared_config.h"

#include <aws/auth/credentials.h>
#include <aws/common/byte_buf.h>
#include <aws/http/proxy.h>

#include <cstdlib>
#include <vector>

namespace s3torch {

namespace {

// Whether the profile's role is assumed with credentials from the instance's or container's
// metadata endpoint (credential_source), which a proxy must not carry.
bool role_from_metadata(const SharedConfig &shared) {
    const std::string source = shared.get("credential_source");
    return source == "Ec2InstanceMetadata" || source == "EcsContainer";
}

// The CRT's SSO provider: the token `aws sso login` cached (~/.aws/sso/cache) exchanged at the
// SSO portal for the role's credentials. The portal is on the internet: through the proxy.
aws_credentials_provider *sso_provider(aws_byte_cursor profile_name, aws_client_bootstrap *bootstrap,
                                       aws_tls_ctx *tls_ctx, const proxy_env_var_settings *proxy) {
    aws_credentials_provider_sso_options o;
    AWS_ZERO_STRUCT(o);
    o.profile_name_override = profile_name;
    o.bootstrap = bootstrap;
    o.tls_ctx = tls_ctx;
    o.proxy_ev_settings = proxy;
    return aws_credentials_provider_new_sso(aws_default_allocator(), &o);
}

// The profile's keys, credential_process or role (assumed at STS through the proxy, unless
// its credential_source is a metadata endpoint, which the same setting would send through it;
// asked again when STS refuses it for a while: retrying_credentials.h).
aws_credentials_provider *profile_provider(const SharedConfig &shared, aws_byte_cursor profile_name,
                                           aws_client_bootstrap *bootstrap, aws_tls_ctx *tls_ctx,
                                           const proxy_env_var_settings *to_sts) {
    aws_credentials_provider_profile_options o;
    AWS_ZERO_STRUCT(o);
    o.bootstrap = bootstrap;
    o.tls_ctx = tls_ctx;
    o.profile_name_override = profile_name;
    if (!role_from_metadata(shared)) o.proxy_ev_settings = const_cast<proxy_env_var_settings *>(to_sts);
    aws_credentials_provider *provider = aws_credentials_provider_new_profile(aws_default_allocator(), &o);
    return shared.get("role_arn").empty() ? provider : with_retries(provider, bootstrap);
}

// The CRT's default chain (aws_credentials_provider_new_chain_default: the environment, the
// profile, web identity, then the container's or the instance's endpoint, cached), built here
// with SSO added (the CRT's chain has no place for it; boto3's has) and so that the proxy the
// environment names carries what goes to STS (and the SSO portal) and nothing else. STS is on the
// internet: behind a proxy that is the only way to it (web identity: EKS IRSA; a profile's
// role_arn), and boto3 takes it there. The CRT's chain gives one proxy setting to all or none;
// the metadata endpoints are link-local, and through a proxy they would fail, or answer with the
// proxy host's own credentials. boto3 reaches the container's directly too.
// `shared`: the config file, read for cfg.profile.
aws_credentials_provider *default_chain(const ClientConfig &cfg, const SharedConfig &shared,
                                        aws_client_bootstrap *bootstrap, aws_tls_ctx *tls_ctx) {
    aws_allocator *alloc = aws_default_allocator();
    // Only a profile named (given, or $AWS_DEFAULT_PROFILE) overrides: the CRT takes any cursor
    // with a pointer, an empty one included, as the profile's name, and then never reads
    // $AWS_PROFILE or "default" (keys in ~/.aws/credentials were not found).
    const std::string profile = profile_override(cfg.profile);
    aws_byte_cursor profile_name;
    AWS_ZERO_STRUCT(profile_name);
    if (!profile.empty()) profile_name = aws_byte_cursor_from_array(profile.data(), profile.size());
    const proxy_env_var_settings *to_sts = env_proxy_settings(cfg.proxy_from_env);

    std::vector<aws_credentials_provider *> sources;
    auto add = [&](aws_credentials_provider *p) {
        if (p) sources.push_back(p);
    };
    {
        aws_credentials_provider_environment_options o;
        AWS_ZERO_STRUCT(o);
        add(aws_credentials_provider_new_environment(alloc, &o));
    }
    add(profile_provider(shared, profile_name, bootstrap, tls_ctx, to_sts));
    {
        aws_credentials_provider_sts_web_identity_options o;
        AWS_ZERO_STRUCT(o);
        o.bootstrap = bootstrap;
        o.tls_ctx = tls_ctx;
        o.profile_name_override = profile_name;
        o.proxy_ev_settings = to_sts;
        add(with_retries(aws_credentials_provider_new_sts_web_identity(alloc, &o), bootstrap));
    }
    // After web identity, as boto3's chain has it; only for a profile with SSO settings (the
    // CRT's provider logs an error for any other).
    if (signs_in_with_sso(shared)) add(sso_provider(profile_name, bootstrap, tls_ctx, to_sts));
    {
        const proxy_env_var_settings *direct = env_proxy_settings(false);
        aws_credentials_provider_ecs_environment_options ecs;
        AWS_ZERO_STRUCT(ecs);
        ecs.bootstrap = bootstrap;
        ecs.tls_ctx = tls_ctx;
        ecs.proxy_ev_settings = direct;
        aws_credentials_provider *metadata = aws_credentials_provider_new_ecs_from_environment(alloc, &ecs);
        const char *disabled = std::getenv("AWS_EC2_METADATA_DISABLED");
        if (!metadata && !(disabled && *disabled && is_true(disabled))) {
            aws_credentials_provider_imds_options imds;
            AWS_ZERO_STRUCT(imds);
            imds.bootstrap = bootstrap;
            imds.proxy_ev_settings = direct;
            metadata = aws_credentials_provider_new_imds(alloc, &imds);
        }
        add(metadata);
    }
    aws_credentials_provider_chain_options chain_options;
    AWS_ZERO_STRUCT(chain_options);
    chain_options.providers = sources.data();
    chain_options.provider_count = sources.size();
    aws_credentials_provider *chain = aws_credentials_provider_new_chain(alloc, &chain_options);
    for (aws_credentials_provider *p : sources) aws_credentials_provider_release(p);  // the chain holds them
    if (!chain) return nullptr;
    aws_credentials_provider_cached_options cached;
    AWS_ZERO_STRUCT(cached);
    cached.source = chain;
    cached.refresh_time_in_milliseconds = kCredentialsRefreshMs;
    aws_credentials_provider *provider = aws_credentials_provider_new_cached(alloc, &cached);
    aws_credentials_provider_release(chain);  // the cache holds it
    return provider;
}

}  // namespace

bool signs_in_with_sso(const SharedConfig &shared) {
    return !shared.get("sso_session").empty() || !shared.get("sso_start_url").empty();
}

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
            const aws_byte_cursor name = aws_byte_cursor_from_array(cfg.profile.data(), cfg.profile.size());
            const proxy_env_var_settings *to_sts = env_proxy_settings(cfg.proxy_from_env);
            const SharedConfig shared(cfg.profile);
            if (signs_in_with_sso(shared)) {
                provider = sso_provider(name, bootstrap, tls_ctx, to_sts);
                if (!provider)
                    throw_invalid("cannot use the SSO settings of AWS profile '" + cfg.profile +
                                  "': it needs sso_account_id, sso_role_name and sso_region (in the profile, or "
                                  "its sso-session section), as `aws configure sso` writes them");
                break;
            }
            provider = profile_provider(shared, name, bootstrap, tls_ctx, to_sts);
            if (!provider)
                throw_invalid("cannot load AWS profile '" + cfg.profile +
                              "' from ~/.aws/credentials or ~/.aws/config (or AWS_SHARED_CREDENTIALS_FILE / "
                              "AWS_CONFIG_FILE): does it exist and have keys?");
            break;
        }
        case CredentialsKind::Default:
            provider = default_chain(cfg, SharedConfig(cfg.profile), bootstrap, tls_ctx);
            break;
    }
    if (!provider) throw error_from_crt(aws_last_error(), {"CreateCredentialsProvider", "", ""});
    return provider;
}

namespace {

std::string sso_hint(const std::string &profile) {
    return "profile '" + profile +
           "' signs in through AWS IAM Identity Center (SSO) and its sign-in token (~/.aws/sso/cache) is missing "
           "or expired (s3torch refreshes it while its sso-session's refresh token is valid; a warning says why "
           "a refresh failed); sign in again: aws sso login --profile " +
           profile + " (S3TORCH_CRT_LOG=error logs why the token was refused)";
}

}  // namespace

namespace {

// The role the credentials come from, as a message names it ("arn:... (...)"), or "" for none:
// a web identity from the environment (EKS IRSA), else the profile's role_arn.
std::string assumed_role(const ClientConfig &cfg, const SharedConfig &shared) {
    const char *arn = std::getenv("AWS_ROLE_ARN");
    const char *token = std::getenv("AWS_WEB_IDENTITY_TOKEN_FILE");
    if (cfg.credentials_kind() == CredentialsKind::Default && arn && *arn && token && *token)
        return std::string(arn) + " ($AWS_ROLE_ARN, with the web identity token in " + token + ")";
    const std::string profile_role = shared.get("role_arn");
    if (!profile_role.empty()) return profile_role + " (role_arn of " + shared.where() + ")";
    return "";
}

}  // namespace

aws_credentials_provider *new_delegate_provider(aws_credentials_provider_delegate_get_credentials_fn *get_credentials,
                                                void *user_data, void (*gone)(void *)) {
    aws_credentials_provider_delegate_options o;
    AWS_ZERO_STRUCT(o);
    o.get_credentials = get_credentials;
    o.delegate_user_data = user_data;
    o.shutdown_options.shutdown_callback = gone;
    o.shutdown_options.shutdown_user_data = user_data;
    return aws_credentials_provider_new_delegate(aws_default_allocator(), &o);
}

std::string credentials_hint(const ClientConfig &cfg) {
    CredentialsKind kind = cfg.credentials_kind();
    if (kind != CredentialsKind::Default && kind != CredentialsKind::Profile) return "";
    SharedConfig shared(cfg.profile);
    if (signs_in_with_sso(shared)) return sso_hint(shared.profile_name());
    const std::string source = profile_source(cfg.profile);
    std::string which = source.empty() ? "" : " (from " + source + ")";
    std::string profile = "profile '" + shared.profile_name() + "'" + which + " in " + shared.credentials_path() +
                          " and " + shared.path();
    const std::string role = assumed_role(cfg, shared);
    if (!role.empty())
        return "the role " + role + " could not be assumed at STS in " + std::to_string(kCredentialsAttempts) +
               " attempts over several seconds: STS refused it (past the account's request rate, or its trust "
               "policy or ARN does not allow it) or could not be reached (through $HTTPS_PROXY where set); "
               "S3TORCH_CRT_LOG=warn logs STS's answers";
    if (kind == CredentialsKind::Profile) return "they were looked for in " + profile;
    return "the default chain found none: it looks in the environment (AWS_ACCESS_KEY_ID, "
           "AWS_SECRET_ACCESS_KEY), " +
           profile +
           ", then web identity, container and instance credentials (S3TORCH_CRT_LOG=error logs why each "
           "had none)";
}

}  // namespace s3torch
