// Client configuration: every field, its default, its limits and its documentation, once.
//
// S3TORCH_CLIENT_CONFIG_FIELDS is the single list. It declares the members of ClientConfig,
// drives validate()'s range checks and messages, and the binding builds the Python class
// s3torch._crt.ClientConfig from it (csrc/bindings/config.cpp). Adding a field is one line
// here plus its spelling in python/s3torch/_config.py (and the stub, which a test checks).
#pragma once

#include "s3torch/aws_endpoint.h"
#include "s3torch/checksum.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace s3torch {

constexpr uint64_t kMiB = 1024ull * 1024ull;
constexpr uint64_t kGiB = 1024ull * kMiB;
constexpr uint64_t kMinPartSize = 5 * kMiB;     // S3's smallest part (but the last)
constexpr uint64_t kMinConfigPartSize = 1;      // accepted (as s3torchconnector does), raised to kMinPartSize
constexpr uint64_t kMaxPartSize = 5 * kGiB;     // S3's largest part
constexpr uint64_t kMinMemoryLimit = 1 * kGiB;  // aws-c-s3 refuses a smaller buffer pool
constexpr double kMaxThroughputGbps = 1000.0;   // accepted above (as s3torchconnector does), lowered to this
constexpr uint64_t kDefaultReadAheadParts = 4;  // stream_read_ahead_bytes 0: this many parts

// X(type, name, python_name, default, min, max, doc), one line per field. `min`/`max` bound
// integer fields inclusively (0, 0 for strings and flags); the few rules a range cannot say
// (a float's open lower bound, "0 or at least 1 GiB", credentials) are in validate().
#define S3TORCH_CLIENT_CONFIG_FIELDS(X)                                                                              \
    X(std::string, region, "region", "us-east-1", 0, 0,                                                              \
      "AWS region, or the one an S3-compatible server expects (lowercase letters, digits, dashes)")                  \
    X(std::string, endpoint, "endpoint", "", 0, 0,                                                                   \
      "http(s)://host[:port]; empty: as boto3 resolves it ($AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, the profile's "  \
      "endpoint_url in ~/.aws/config), else AWS's for the region (docs/configuration.md)")                           \
    X(double, throughput_target_gbps, "throughput_target_gbps", 10.0, 0, 0,                                          \
      "aws-c-s3 sizes its connection pool for this (above 1000: 1000 is used)")                                      \
    X(uint64_t, part_size, "part_size", 8 * ::s3torch::kMiB, ::s3torch::kMinConfigPartSize, ::s3torch::kMaxPartSize, \
      "part size in bytes of multipart uploads and ranged GETs (below 5 MiB: 5 MiB is used)")                        \
    X(bool, unsigned_requests, "unsigned", false, 0, 0, "send unsigned requests (public buckets)")                   \
    X(bool, force_path_style, "force_path_style", false, 0, 0,                                                       \
      "address buckets as endpoint/bucket/key (IP-address and localhost endpoints always are, and every endpoint "   \
      "when the profile's s3 addressing_style is path)")                                                             \
    X(uint32_t, max_attempts, "max_attempts", 10, 1, 64,                                                             \
      "attempts per request, the first try included (1: no retries at all)")                                         \
    X(uint32_t, retry_timeout_s, "retry_timeout_s", 120, 0, 86400,                                                   \
      "once the endpoint has answered, how long a request retries outages, throttling, 5xx (0: max_attempts)")       \
    X(bool, known_endpoint, "known_endpoint", false, 0, 0,                                                           \
      "the endpoint is known to be right: retries ride out outages from the first request, before it answers")       \
    X(std::string, profile, "profile", "", 0, 0, "named profile from ~/.aws/credentials and ~/.aws/config")          \
    X(bool, requester_pays, "requester_pays", false, 0, 0,                                                           \
      "send x-amz-request-payer: requester with every request (Requester Pays buckets; the requester pays)")         \
    X(uint64_t, memory_limit_bytes, "memory_limit_bytes", 0, 0, 1ull << 60,                                          \
      "cap on aws-c-s3's part-buffer pool (0: automatic; else at least 1 GiB)")                                      \
    X(std::string, access_key_id, "access_key_id", "", 0, 0, "static credentials: access key id")                    \
    X(std::string, secret_access_key, "secret_access_key", "", 0, 0, "static credentials: secret access key")        \
    X(std::string, session_token, "session_token", "", 0, 0, "static credentials: session token")                    \
    X(std::string, credentials, "credentials", "", 0, 0,                                                             \
      "provider: default, static, environment, profile or anonymous; empty: from the fields above")                  \
    X(std::string, ca_file, "ca_file", "", 0, 0,                                                                     \
      "PEM bundle to trust for a private TLS endpoint; empty: $AWS_CA_BUNDLE, else the profile's ca_bundle, else "   \
      "the system's")                                                                                                \
    X(bool, proxy_from_env, "proxy_from_env", true, 0, 0,                                                            \
      "connect through $HTTPS_PROXY (https endpoints) or $HTTP_PROXY (http), except to hosts in $NO_PROXY and "      \
      "loopback endpoints, as boto3 does")                                                                           \
    X(bool, s3express, "s3express", false, 0, 0, "enable S3 Express One Zone (directory buckets)")                   \
    X(uint64_t, stream_read_ahead_bytes, "stream_read_ahead_bytes", 0, 0, 1ull << 48,                                \
      "read-ahead window of streaming GETs (0: 4 x part size)")                                                      \
    X(uint32_t, connect_timeout_ms, "connect_timeout_ms", 0, 0, 1ull << 31, "TCP connect timeout (0: the CRT's)")    \
    X(uint32_t, stall_timeout_s, "stall_timeout_s", 10, 1, 3600,                                                     \
      "a connection on which a request moves no byte for this long (its wait for an answer included) "               \
      "is closed and the request retried")                                                                           \
    X(std::string, checksums, "checksums", "", 0, 0,                                                                 \
      "checksum uploads send for the server to verify: crc32c, crc32 or off; empty: as boto3 reads "                 \
      "$AWS_REQUEST_CHECKSUM_CALCULATION or the profile's request_checksum_calculation (when_required: off), "       \
      "else crc32c")                                                                                                 \
    X(std::string, checksum_type, "checksum_type", "full_object", 0, 0,                                              \
      "a multipart upload's stored checksum: full_object (of the whole object) or composite (of the part CRCs)")     \
    X(std::string, sse, "sse", "", 0, 0,                                                                             \
      "server-side encryption of the objects it writes: AES256 (SSE-S3), aws:kms (SSE-KMS) or aws:kms:dsse "         \
      "(DSSE-KMS); empty: the bucket's default encryption")                                                          \
    X(std::string, sse_kms_key_id, "sse_kms_key_id", "", 0, 0,                                                       \
      "with sse aws:kms or aws:kms:dsse: the KMS key (id, ARN or alias ARN); empty: the account's aws/s3 key")       \
    X(std::string, sse_customer_key, "sse_customer_key", "", 0, 0,                                                   \
      "SSE-C: a 256-bit key, base64, that objects are written with and that every read and HEAD presents "           \
      "(an object written with it cannot be read without it)")                                                       \
    X(std::string, expected_bucket_owner, "expected_bucket_owner", "", 0, 0,                                         \
      "the 12-digit AWS account that must own every bucket it touches; S3 refuses (403) a request to a bucket of "   \
      "another account")                                                                                             \
    X(std::string, user_agent, "user_agent", "", 0, 0,                                                               \
      "User-Agent header of every request (aws-c-s3 appends its own product token); empty: the CRT's alone")

enum class CredentialsKind {
    Default,      // the default provider chain: environment, profile, web identity, ECS, IMDS
    Static,       // access_key_id / secret_access_key / session_token
    Environment,  // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN only
    Profile,      // a named profile from ~/.aws/credentials and ~/.aws/config
    Anonymous,    // unsigned requests (public buckets, test servers)
};

struct ClientConfig {
#define S3TORCH_DECLARE_FIELD(type, name, py_name, default_value, min, max, doc) type name = default_value;
    S3TORCH_CLIENT_CONFIG_FIELDS(S3TORCH_DECLARE_FIELD)
#undef S3TORCH_DECLARE_FIELD

    // Check every field on its own and together, without looking at the environment. Throws
    // S3Error(InvalidArgument) with a message that names the field and what is allowed.
    void validate() const;
    // The credentials provider these fields select (`credentials`, else unsigned, keys,
    // profile, in that order). Call after validate().
    CredentialsKind credentials_kind() const;
    // The CRC uploads carry (`checksums`), none for "off": the one reading of that field, for
    // validate(), the CRT's checksum setting (transfer.cpp) and the full-object CRC (put.cpp).
    std::optional<CrcAlgorithm> upload_crc() const;
};

// "<field> must be between <min> and <max>, got <got>": the one message for a value out of
// a field's range, also used by the binding for Python ints that do not fit the field's type.
[[noreturn]] void throw_out_of_range(const char *field, uint64_t min, uint64_t max, const std::string &got);

// A parsed endpoint: scheme, host (no brackets), port (0 = scheme default).
struct Endpoint {
    bool tls = true;
    std::string host;
    uint32_t port = 0;
    bool custom = false;            // given by the user/environment, not derived from the region
    std::string source;             // where it came from, for `s3torch config` and messages
    AwsEndpointSettings aws;        // what AWS's endpoint rules are asked with (aws_endpoint.h)
    std::string authority() const;  // host[:port]
    std::string url() const;        // scheme://host[:port]
};

class SharedConfig;

// Upload checksums as boto3 (1.36 and later) decides on them, for a config that leaves
// `checksums` empty: $AWS_REQUEST_CHECKSUM_CALCULATION, else the profile's
// request_checksum_calculation, in any case; when_supported (the default) is "crc32c",
// when_required "off" (what S3-compatible servers that refuse the headers need). Returns the
// value and where it came from; throws InvalidArgument, naming the source, for anything else.
std::pair<std::string, std::string> checksums_as_boto3_reads_them(const SharedConfig &shared);

// The CA file as boto3 reads it, for a config that leaves `ca_file` empty: $AWS_CA_BUNDLE, else
// the profile's ca_bundle; with where it came from. {"", ""}: the system's trust store.
std::pair<std::string, std::string> ca_bundle_as_boto3_reads_it(const SharedConfig &shared);

// validate() `config`, then resolve what it leaves open: the endpoint (from the environment or
// the shared config file if not given, as boto3 does; written back into config.endpoint), path
// style (the profile's s3 addressing_style), the CA file ($AWS_CA_BUNDLE, the profile's ca_bundle),
// a part size below S3's 5 MiB minimum
// (raised to it, as aws-c-s3 does for uploads) and the streaming read-ahead (0: 4 parts).
Endpoint resolve_config(ClientConfig &config);

}  // namespace s3torch
