#include "s3torch/shared_providers.h"

#include "s3torch/carried_credentials.h"
#include "s3torch/credentials.h"
#include "s3torch/errors.h"

#include <aws/auth/credentials.h>
#include <aws/cal/hash.h>
#include <aws/common/byte_buf.h>
#include <aws/common/string.h>
#include <aws/io/tls_channel_handler.h>
#include <aws/sdkutils/aws_profile.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <utility>

extern char **environ;

namespace s3torch {

namespace {

// Distinct settings a process keeps objects for at once; the least recently used goes first.
constexpr size_t kMaxEntries = 8;

// Appends a length-prefixed field, so that no two different lists of fields read the same.
void field(std::string &out, const std::string &value) {
    out += std::to_string(value.size());
    out += ':';
    out += value;
}

// A file's path and bytes ("" and a mark for a file that cannot be read).
void file_field(std::string &out, const std::string &path) {
    field(out, path);
    if (path.empty()) return;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        field(out, "<unreadable>");
        return;
    }
    field(out, std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
}

// Every AWS_* variable of the environment and the proxy ones, sorted: what the CRT's providers
// read when they are made (web identity's role and token file, the container's endpoint, a
// profile's name, the files' paths, IMDS switched off, the proxy).
void environment_field(std::string &out) {
    std::vector<std::string> vars;
    for (char **e = environ; e && *e; ++e) {
        const char *eq = std::strchr(*e, '=');
        if (!eq) continue;
        std::string name(*e, static_cast<size_t>(eq - *e));
        std::string lower = name;
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        if (name.rfind("AWS_", 0) == 0 || lower == "http_proxy" || lower == "https_proxy" || lower == "no_proxy")
            vars.emplace_back(*e);
    }
    std::sort(vars.begin(), vars.end());
    field(out, std::to_string(vars.size()));
    for (const std::string &v : vars) field(out, v);
}

std::string path_of(aws_string *s) {
    std::string out = s ? std::string(aws_string_c_str(s), s->len) : std::string();
    aws_string_destroy(s);
    return out;
}

std::string sha256(const std::string &material) {
    aws_allocator *alloc = aws_default_allocator();
    aws_byte_cursor in = aws_byte_cursor_from_array(material.data(), material.size());
    uint8_t digest[AWS_SHA256_LEN];
    aws_byte_buf out = aws_byte_buf_from_empty_array(digest, sizeof(digest));
    if (aws_sha256_compute(alloc, &in, &out, 0) != AWS_OP_SUCCESS)
        throw error_from_crt(aws_last_error(), {"CreateCredentialsProvider", "", ""});
    return std::string(reinterpret_cast<const char *>(digest), out.len);
}

// The key of a TLS context: the CA file's path and bytes.
std::string ca_key(const ClientConfig &cfg) {
    std::string material = "tls";
    file_field(material, cfg.ca_file);
    return sha256(material);
}

std::string credentials_key(const ClientConfig &cfg, const std::string &ca_key) {
    std::string material = "credentials";
    field(material, std::to_string(static_cast<int>(cfg.credentials_kind())));
    field(material, cfg.profile);
    field(material, cfg.proxy_from_env ? "proxy" : "direct");
    field(material, ca_key);  // STS and the SSO portal are reached with it
    environment_field(material);
    aws_allocator *alloc = aws_default_allocator();
    file_field(material, path_of(aws_get_config_file_path(alloc, nullptr)));
    file_field(material, path_of(aws_get_credentials_file_path(alloc, nullptr)));
    return sha256(material);
}

[[noreturn]] void refuse_ca_file(const ClientConfig &cfg, const std::string &why) {
    throw_invalid("cannot use CA file '" + cfg.ca_file +
                  "' (ca_file, else $AWS_CA_BUNDLE, else the profile's ca_bundle): " + why);
}

void release(aws_tls_ctx *ctx) { aws_tls_ctx_release(ctx); }
void release(aws_credentials_provider *p) { aws_credentials_provider_release(p); }
aws_tls_ctx *acquire(aws_tls_ctx *ctx) { return aws_tls_ctx_acquire(ctx); }
aws_credentials_provider *acquire(aws_credentials_provider *p) { return aws_credentials_provider_acquire(p); }

// The entry for `key` in `entries` (a new reference), or nullptr. Caller holds the lock.
template <typename E>
decltype(E::object) find_locked(std::vector<E> &entries, const std::string &key, uint64_t now) {
    for (E &e : entries)
        if (e.key == key) {
            e.used = now;
            return acquire(e.object);
        }
    return nullptr;
}

// Keeps `object` (the caller's reference stays the caller's) under `key`, unless another thread
// put one there since the caller looked: then that one is returned (a new reference) and
// `object` released. Caller holds the lock.
template <typename E>
decltype(E::object) keep_locked(std::vector<E> &entries, const std::string &key, decltype(E::object) object,
                                uint64_t now, std::shared_ptr<RememberedCredentials> memory = nullptr) {
    if (auto *theirs = find_locked(entries, key, now)) {
        release(object);
        return theirs;
    }
    if (entries.size() >= kMaxEntries) {
        auto oldest =
            std::min_element(entries.begin(), entries.end(), [](const E &a, const E &b) { return a.used < b.used; });
        if (oldest->memory) carry(*oldest->memory);  // for the next provider of its key
        release(oldest->object);
        entries.erase(oldest);
    }
    entries.push_back({key, acquire(object), now, std::move(memory)});
    return object;
}

}  // namespace

SharedProviders::~SharedProviders() {
    for (auto &e : tls_) release(e.object);
    for (auto &e : credentials_) {
        carry(*e.memory);
        release(e.object);
    }
}

SharedProviders::ForClient SharedProviders::for_client(const ClientConfig &cfg, bool tls) {
    const CredentialsKind kind = cfg.credentials_kind();
    const bool shared = kind == CredentialsKind::Default || kind == CredentialsKind::Profile;
    // The default chain and a profile reach STS and SSO over TLS, whatever the endpoint.
    const bool with_tls = tls || shared;
    const std::string ca = with_tls ? ca_key(cfg) : std::string();
    ForClient out;
    if (with_tls) out.tls_ctx = tls_context(cfg, ca);
    try {
        out.credentials =
            shared ? credentials(cfg, out.tls_ctx, ca) : make_credentials_provider(cfg, bootstrap_, out.tls_ctx);
    } catch (...) {
        if (out.tls_ctx) release(out.tls_ctx);
        throw;
    }
    return out;
}

aws_tls_ctx *SharedProviders::tls_context(const ClientConfig &cfg, const std::string &key) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (aws_tls_ctx *ctx = find_locked(tls_, key, ++calls_)) return ctx;
    }
    // Made outside the lock: parsing a CA bundle takes milliseconds.
    aws_allocator *alloc = aws_default_allocator();
    aws_tls_ctx_options tls_options;
    aws_tls_ctx_options_init_default_client(&tls_options, alloc);
    if (!cfg.ca_file.empty() &&
        aws_tls_ctx_options_override_default_trust_store_from_path(&tls_options, nullptr, cfg.ca_file.c_str())) {
        int err = aws_last_error();
        aws_tls_ctx_options_clean_up(&tls_options);
        refuse_ca_file(cfg, crt_error_name(err));
    }
    aws_tls_ctx *ctx = aws_tls_client_ctx_new(alloc, &tls_options);
    aws_tls_ctx_options_clean_up(&tls_options);
    if (!ctx && !cfg.ca_file.empty())  // s2n reads the certificates only here
        refuse_ca_file(cfg, "the TLS library could not load its certificates (" + crt_error_name(aws_last_error()) +
                                "); it must hold PEM certificates");
    if (!ctx) throw error_from_crt(aws_last_error(), {"CreateTlsContext", "", ""});
    std::lock_guard<std::mutex> lock(mu_);
    return keep_locked(tls_, key, ctx, ++calls_);
}

aws_credentials_provider *SharedProviders::credentials(const ClientConfig &cfg, aws_tls_ctx *tls_ctx,
                                                       const std::string &ca_key) {
    const std::string key = credentials_key(cfg, ca_key);
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (aws_credentials_provider *p = find_locked(credentials_, key, ++calls_)) return p;
    }
    std::shared_ptr<RememberedCredentials> memory;
    aws_credentials_provider *p = remembering(make_credentials_provider(cfg, bootstrap_, tls_ctx), key, &memory);
    if (!p) throw error_from_crt(aws_last_error(), {"CreateCredentialsProvider", "", ""});
    std::lock_guard<std::mutex> lock(mu_);
    return keep_locked(credentials_, key, p, ++calls_, std::move(memory));
}

void SharedProviders::forget(aws_credentials_provider *provider) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(credentials_.begin(), credentials_.end(),
                           [&](const Entry<aws_credentials_provider> &e) { return e.object == provider; });
    if (it == credentials_.end()) return;
    forget_refused(*it->memory);
    release(it->object);
    credentials_.erase(it);
}

}  // namespace s3torch
