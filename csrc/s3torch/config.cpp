#include "s3torch/config.h"

#include "s3torch/errors.h"
#include "s3torch/request_headers.h"
#include "s3torch/shared_config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <utility>

namespace s3torch {

std::string Endpoint::url() const { return (tls ? "https://" : "http://") + authority(); }

std::string Endpoint::authority() const {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    if (port == 0) return h;
    return h + ":" + std::to_string(port);
}

namespace {

bool valid_region(const std::string &r) {
    // AWS regions and the names other S3 implementations use: lowercase letters, digits and
    // single dashes, e.g. us-east-1, eu-central-2, us-gov-west-1, auto, garage.
    if (r.empty() || r.size() > 64 || r.front() == '-' || r.back() == '-') return false;
    char prev = 0;
    for (char c : r) {
        if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '-'))
            return false;
        if (c == '-' && prev == '-') return false;
        prev = c;
    }
    return true;
}

// `from`: where the URL came from, for the error ("" when given in the config).
Endpoint parse_endpoint(const std::string &url, const std::string &from = "") {
    auto bad = [&](const std::string &why) -> Endpoint {
        throw_invalid("malformed endpoint '" + url + "'" + (from.empty() ? "" : " (from " + from + ")") + ": " + why +
                      " (expected http://host:port or https://host[:port], e.g. http://127.0.0.1:9000)");
    };
    Endpoint ep;
    ep.custom = true;
    std::string rest;
    if (url.rfind("https://", 0) == 0) {
        ep.tls = true;
        rest = url.substr(8);
    } else if (url.rfind("http://", 0) == 0) {
        ep.tls = false;
        rest = url.substr(7);
    } else {
        return bad("scheme must be http:// or https://");
    }
    while (!rest.empty() && rest.back() == '/') rest.pop_back();
    if (rest.find('/') != std::string::npos || rest.find('?') != std::string::npos)
        return bad("a path or query is not allowed");
    if (rest.find('@') != std::string::npos) return bad("user info is not allowed");
    std::string port_str;
    if (!rest.empty() && rest.front() == '[') {
        size_t close = rest.find(']');
        if (close == std::string::npos) return bad("unclosed IPv6 bracket");
        ep.host = rest.substr(1, close - 1);
        std::string after = rest.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return bad("junk after IPv6 address");
            port_str = after.substr(1);
            if (port_str.empty()) return bad("empty port");
        }
    } else {
        size_t colon = rest.rfind(':');
        if (colon != std::string::npos) {
            ep.host = rest.substr(0, colon);
            port_str = rest.substr(colon + 1);
            if (port_str.empty()) return bad("empty port");
        } else {
            ep.host = rest;
        }
        for (char c : ep.host) {
            if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_'))
                return bad(std::string("invalid character '") + c + "' in host");
        }
    }
    if (ep.host.empty()) return bad("no host");
    if (!port_str.empty()) {
        if (port_str.size() > 5) return bad("port out of range");
        for (char c : port_str)
            if (!std::isdigit(static_cast<unsigned char>(c))) return bad("port is not a number");
        long p = std::strtol(port_str.c_str(), nullptr, 10);
        if (p < 1 || p > 65535) return bad("port out of range 1..65535");
        ep.port = static_cast<uint32_t>(p);
    }
    return ep;
}

// The range of an integer field; strings, flags and floats have none here.
template <class T>
void check_range(const T &value, const char *field, uint64_t min, uint64_t max) {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        uint64_t v = value;
        if (v < min || v > max) throw_out_of_range(field, min, max, std::to_string(v));
    }
}

}  // namespace

[[noreturn]] void throw_out_of_range(const char *field, uint64_t min, uint64_t max, const std::string &got) {
    throw_invalid(std::string(field) + " must be between " + std::to_string(min) + " and " + std::to_string(max) +
                  ", got " + got);
}

void ClientConfig::validate() const {
#define S3TORCH_CHECK_RANGE(type, name, py_name, default_value, min, max, doc) check_range(name, py_name, min, max);
    S3TORCH_CLIENT_CONFIG_FIELDS(S3TORCH_CHECK_RANGE)
#undef S3TORCH_CHECK_RANGE
    if (!valid_region(region))
        throw_invalid("invalid region '" + region +
                      "': use a region name such as us-east-1 (lowercase letters, digits, dashes)");
    if (!endpoint.empty()) parse_endpoint(endpoint);
    if (!(throughput_target_gbps > 0.0) || !std::isfinite(throughput_target_gbps))
        throw_invalid("throughput_target_gbps must be a positive number, got " +
                      std::to_string(throughput_target_gbps));
    if (memory_limit_bytes != 0 && memory_limit_bytes < kMinMemoryLimit)
        throw_invalid("memory_limit_bytes must be 0 (automatic) or at least 1 GiB, got " +
                      std::to_string(memory_limit_bytes));
    if (access_key_id.empty() != secret_access_key.empty())
        throw_invalid("set both access_key_id and secret_access_key, or neither");
    if (unsigned_requests && requester_pays)
        throw_invalid("requester_pays needs signed requests (S3 charges the requester's account), not unsigned");
    if (unsigned_requests && !access_key_id.empty())
        throw_invalid("unsigned requests cannot be combined with access keys");
    CredentialsKind kind = credentials_kind();
    if (kind == CredentialsKind::Static && access_key_id.empty())
        throw_invalid("static credentials need both an access key id and a secret access key");
    if (kind == CredentialsKind::Profile && profile.empty()) throw_invalid("profile credentials need a profile name");
    for (char ch : user_agent)
        if (ch == '\r' || ch == '\n' || ch == '\0')
            throw_invalid("user_agent must be a single line (no CR, LF or NUL)");
    if (!checksums.empty() && checksums != "off" && !upload_crc())
        throw_invalid("checksums must be one of 'crc32c', 'crc32', 'off', got '" + checksums + "'");
    if (!sse.empty() && sse != "AES256" && sse != "aws:kms" && sse != "aws:kms:dsse")
        throw_invalid("sse must be one of 'AES256', 'aws:kms', 'aws:kms:dsse' (or empty: the bucket's default), got '" +
                      sse + "'");
    if (!sse_kms_key_id.empty()) {
        if (sse.rfind("aws:kms", 0) != 0)
            throw_invalid("sse_kms_key_id needs sse='aws:kms' or sse='aws:kms:dsse', " +
                          (sse.empty() ? std::string("and sse is not set") : "got sse='" + sse + "'"));
        if (sse_kms_key_id.size() > 2048)
            throw_invalid("sse_kms_key_id is longer than 2048 characters (a KMS key id, ARN or alias ARN)");
        for (char ch : sse_kms_key_id)
            if (ch < 0x21 || ch > 0x7e)
                throw_invalid("sse_kms_key_id must be printable ASCII without spaces (a KMS key id, ARN or alias ARN)");
    }
    if (!sse_customer_key.empty()) {
        // Never the key itself in a message: it is a secret.
        if (!customer_key_md5(sse_customer_key))
            throw_invalid(
                "sse_customer_key must be a 256-bit key in base64 (44 characters, e.g. from "
                "`openssl rand -base64 32`; in Python base64.b64encode(key_bytes).decode())");
        if (!sse.empty())
            throw_invalid(
                "sse and sse_customer_key cannot both be set: an object is encrypted with a customer key "
                "(SSE-C) or by S3 (sse), not both");
    }
    if (!expected_bucket_owner.empty() &&
        (expected_bucket_owner.size() != 12 || !std::all_of(expected_bucket_owner.begin(), expected_bucket_owner.end(),
                                                            [](char c) { return c >= '0' && c <= '9'; })))
        throw_invalid("expected_bucket_owner must be a 12-digit AWS account id, got '" +
                      expected_bucket_owner.substr(0, 64) + "'");
    if (checksum_type != "full_object" && checksum_type != "composite")
        throw_invalid("checksum_type must be one of 'full_object', 'composite', got '" + checksum_type + "'");
}

std::optional<CrcAlgorithm> ClientConfig::upload_crc() const {
    if (checksums == "crc32c") return CrcAlgorithm::Crc32c;
    if (checksums == "crc32") return CrcAlgorithm::Crc32;
    return std::nullopt;  // "off", or a value validate() refuses
}

CredentialsKind ClientConfig::credentials_kind() const {
    if (credentials.empty()) {
        if (unsigned_requests) return CredentialsKind::Anonymous;
        if (!access_key_id.empty()) return CredentialsKind::Static;
        if (!profile.empty()) return CredentialsKind::Profile;
        return CredentialsKind::Default;
    }
    if (credentials == "default") return CredentialsKind::Default;
    if (credentials == "static") return CredentialsKind::Static;
    if (credentials == "environment") return CredentialsKind::Environment;
    if (credentials == "profile") return CredentialsKind::Profile;
    if (credentials == "anonymous") return CredentialsKind::Anonymous;
    throw_invalid("credentials must be one of 'default', 'static', 'environment', 'profile', 'anonymous', got '" +
                  credentials + "'");
}

namespace {

// A boolean setting as boto3 reads it: the environment variable when set, else the profile's.
bool setting(const char *env, bool from_profile) {
    const char *v = std::getenv(env);
    return v && *v ? is_true(v) : from_profile;
}

// A configured endpoint URL and where it came from, in boto3's order: $AWS_ENDPOINT_URL_S3,
// $AWS_ENDPOINT_URL, the s3 endpoint_url of the profile's [services] section, the profile's
// endpoint_url; none when $AWS_IGNORE_CONFIGURED_ENDPOINT_URLS (or the profile's
// ignore_configured_endpoint_urls) is true.
std::pair<std::string, std::string> configured_endpoint(const SharedConfig &shared) {
    if (setting("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", shared.flag("ignore_configured_endpoint_urls"))) return {};
    for (const char *var : {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"}) {
        const char *v = std::getenv(var);
        if (v && *v) return {v, std::string("$") + var};
    }
    std::string url = shared.service("s3", "endpoint_url");
    if (!url.empty()) return {url, "the s3 endpoint_url of the services section named by " + shared.where()};
    url = shared.get("endpoint_url");
    if (!url.empty()) return {url, "the endpoint_url of " + shared.where()};
    return {};
}

// The settings AWS's endpoint rules take, as boto3 reads them: the environment variable, else
// the profile's setting (at the top or in its s3 section).
AwsEndpointSettings aws_endpoint_settings(const SharedConfig &shared) {
    auto in_profile = [&](const char *top, const char *in_s3) {
        std::string v = shared.get(top);
        return v.empty() ? shared.get("s3", in_s3) : v;
    };
    auto either = [&](const char *env, const char *top, const char *in_s3, bool fallback) {
        const std::string v = in_profile(top, in_s3);
        return setting(env, v.empty() ? fallback : is_true(v));
    };
    AwsEndpointSettings a;
    a.fips = setting("AWS_USE_FIPS_ENDPOINT", shared.flag("use_fips_endpoint"));
    a.dualstack = setting("AWS_USE_DUALSTACK_ENDPOINT",
                          shared.flag("use_dualstack_endpoint") || is_true(shared.get("s3", "use_dualstack_endpoint")));
    a.accelerate = is_true(shared.get("s3", "use_accelerate_endpoint"));
    a.use_arn_region = either("AWS_S3_USE_ARN_REGION", "s3_use_arn_region", "use_arn_region", true);
    a.disable_mrap = either("AWS_S3_DISABLE_MULTIREGION_ACCESS_POINTS", "s3_disable_multiregion_access_points",
                            "s3_disable_multiregion_access_points", false);
    return a;
}

}  // namespace

std::pair<std::string, std::string> checksums_as_boto3_reads_them(const SharedConfig &shared) {
    const char *var = std::getenv("AWS_REQUEST_CHECKSUM_CALCULATION");
    std::string value = var && *var ? var : shared.get("request_checksum_calculation");
    const std::string from =
        var && *var ? "$AWS_REQUEST_CHECKSUM_CALCULATION" : "the request_checksum_calculation of " + shared.where();
    for (char &ch : value) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (value.empty()) return {"crc32c", "boto3's default, when_supported"};
    if (value == "when_supported") return {"crc32c", from};
    if (value == "when_required") return {"off", from};
    throw_invalid("request_checksum_calculation must be when_supported or when_required, got '" + value.substr(0, 64) +
                  "' (from " + from + ")");
}

std::pair<std::string, std::string> ca_bundle_as_boto3_reads_it(const SharedConfig &shared) {
    const char *bundle = std::getenv("AWS_CA_BUNDLE");
    if (bundle && *bundle) return {bundle, "$AWS_CA_BUNDLE"};
    std::string path = shared.get("ca_bundle");
    if (path.empty()) return {};
    return {path, "the ca_bundle of profile '" + shared.profile_name() + "'"};
}

Endpoint resolve_config(ClientConfig &c) {
    c.validate();
    if (c.part_size < kMinPartSize) c.part_size = kMinPartSize;
    if (c.throughput_target_gbps > kMaxThroughputGbps) c.throughput_target_gbps = kMaxThroughputGbps;
    if (c.stream_read_ahead_bytes == 0) c.stream_read_ahead_bytes = kDefaultReadAheadParts * c.part_size;

    SharedConfig shared(c.profile);
    if (c.ca_file.empty()) c.ca_file = ca_bundle_as_boto3_reads_it(shared).first;
    if (shared.get("s3", "addressing_style") == "path") c.force_path_style = true;
    if (c.checksums.empty()) c.checksums = checksums_as_boto3_reads_them(shared).first;
    const AwsEndpointSettings aws = aws_endpoint_settings(shared);
    if (c.endpoint.empty()) {
        auto [url, from] = configured_endpoint(shared);
        if (!url.empty()) {
            Endpoint ep = parse_endpoint(url, from);
            ep.source = from;
            ep.aws = aws;
            c.endpoint = url;
            return ep;
        }
    } else {
        Endpoint ep = parse_endpoint(c.endpoint);
        ep.source = "given";
        ep.aws = aws;
        return ep;
    }
    // AWS's endpoint for the region, by AWS's rules (aws_endpoint.h); each bucket's own
    // (its virtual host, an access point's) is resolved per request.
    Endpoint ep = parse_endpoint(resolve_aws_endpoint(c.region, "", aws, "", c.force_path_style).url);
    ep.custom = false;
    ep.aws = aws;
    ep.source = std::string("AWS's for the region") + (aws.fips ? ", FIPS" : "") +
                (aws.dualstack ? ", dual-stack" : "") + (aws.accelerate ? ", Transfer Acceleration" : "");
    return ep;
}

}  // namespace s3torch
