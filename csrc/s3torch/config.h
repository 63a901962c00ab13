// Client configuration, validated once on construction of a Client.
#pragma once

#include <cstdint>
#include <string>

namespace s3torch {

constexpr uint64_t kMiB = 1024ull * 1024ull;
constexpr uint64_t kGiB = 1024ull * kMiB;
constexpr uint64_t kMinPartSize = 5 * kMiB;
constexpr uint64_t kMaxPartSize = 5 * kGiB;
constexpr uint32_t kMaxAttemptsLimit = 64;

enum class CredentialsKind {
    Default,      // the default provider chain: environment, profile, web identity, ECS, IMDS
    Static,       // access_key_id / secret_access_key / session_token below
    Environment,  // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN only
    Profile,      // a named profile from ~/.aws/credentials and ~/.aws/config
    Anonymous,    // unsigned requests (public buckets, test servers)
};

struct CredentialsConfig {
    CredentialsKind kind = CredentialsKind::Default;
    std::string access_key_id;
    std::string secret_access_key;
    std::string session_token;
    std::string profile;  // Profile (and Default, as the chain's profile) name
};

struct ClientConfig {
    std::string region = "us-east-1";
    // "" means AWS's endpoint for the region, or $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL.
    std::string endpoint;
    bool force_path_style = false;
    uint64_t part_size = 8 * kMiB;
    double throughput_target_gbps = 10.0;
    uint32_t max_attempts = 10;
    uint64_t memory_limit_bytes = 0;  // 0: the CRT's default for the throughput target
    CredentialsConfig credentials;
    std::string ca_file;  // PEM bundle for private TLS endpoints
    bool s3express = false;
    // Read-ahead window of streaming GETs, bytes (0: 4 x part size).
    uint64_t stream_read_ahead_bytes = 0;
    uint32_t connect_timeout_ms = 0;  // 0: CRT default
};

// A parsed endpoint: scheme, host (no brackets), port (0 = scheme default).
struct Endpoint {
    bool tls = true;
    std::string host;
    uint32_t port = 0;
    bool custom = false;  // given by the user/environment, not derived from the region
    std::string authority() const;  // host[:port]
};

// Validate `config` and resolve its endpoint. Throws S3Error(InvalidArgument) with a message
// that says what is wrong and what is allowed.
Endpoint validate_config(ClientConfig &config);

}  // namespace s3torch
