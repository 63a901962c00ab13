#include "s3torch/config.h"

#include "s3torch/errors.h"

#include <cctype>
#include <cstdlib>

namespace s3torch {

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

Endpoint parse_endpoint(const std::string &url) {
    auto bad = [&](const std::string &why) -> Endpoint {
        throw_invalid("malformed endpoint '" + url + "': " + why +
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

}  // namespace

Endpoint validate_config(ClientConfig &c) {
    if (!valid_region(c.region))
        throw_invalid("invalid region '" + c.region +
                      "': use a region name such as us-east-1 (lowercase letters, digits, dashes)");
    if (c.part_size < kMinPartSize || c.part_size > kMaxPartSize)
        throw_invalid("part_size " + std::to_string(c.part_size) + " out of range: must be between 5 MiB (" +
                      std::to_string(kMinPartSize) + ") and 5 GiB (" + std::to_string(kMaxPartSize) + ") bytes");
    if (!(c.throughput_target_gbps > 0.0) || c.throughput_target_gbps > 1000.0)
        throw_invalid("throughput_target_gbps must be in (0, 1000], got " + std::to_string(c.throughput_target_gbps));
    if (c.max_attempts < 1 || c.max_attempts > kMaxAttemptsLimit)
        throw_invalid("max_attempts must be between 1 and " + std::to_string(kMaxAttemptsLimit) + ", got " +
                      std::to_string(c.max_attempts));
    if (c.memory_limit_bytes != 0 && c.memory_limit_bytes < 1 * kGiB)
        throw_invalid("memory_limit_bytes must be 0 (automatic) or at least 1 GiB, got " +
                      std::to_string(c.memory_limit_bytes));
    if (c.credentials.kind == CredentialsKind::Static &&
        (c.credentials.access_key_id.empty() || c.credentials.secret_access_key.empty()))
        throw_invalid("static credentials need both an access key id and a secret access key");
    if (c.credentials.kind == CredentialsKind::Profile && c.credentials.profile.empty())
        throw_invalid("profile credentials need a profile name");
    if (c.stream_read_ahead_bytes == 0) c.stream_read_ahead_bytes = 4 * c.part_size;

    std::string url = c.endpoint;
    if (url.empty()) {
        for (const char *var : {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"}) {
            const char *v = std::getenv(var);
            if (v && *v) {
                url = v;
                break;
            }
        }
    }
    if (!url.empty()) {
        c.endpoint = url;
        return parse_endpoint(url);
    }
    Endpoint ep;
    ep.tls = true;
    ep.host = "s3." + c.region + ".amazonaws.com";
    return ep;
}

}  // namespace s3torch
