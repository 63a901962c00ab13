// Addressing and HTTP messages: where a (bucket, key) lives on the endpoint and the
// request that reaches it.
#pragma once

#include "s3torch/config.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

struct aws_http_message;
struct proxy_env_var_settings;

namespace s3torch {

struct Address {
    std::string host;          // Host header / endpoint authority, e.g. "bucket.s3.us-east-1.amazonaws.com"
    std::string path;          // URI-encoded path with query, e.g. "/bucket/a%20b?uploads"
    std::string endpoint_uri;  // scheme://authority, passed to the meta request
    Signing signing;           // how AWS's rules say to sign for it; empty: as the client signs
};

// URI-encode a key as a path (keeps '/').
std::string encode_path(const std::string &key);
// URI-encode a query parameter value; decode_param undoes it.
std::string encode_param(const std::string &value);
std::string decode_param(const std::string &value);

// Where (bucket, key) lives: by AWS's endpoint rules on AWS's endpoints and for ARNs
// (aws_endpoint.h), else on the endpoint given, path-style where a bucket cannot be a host.
// Throws InvalidArgument for what the rules refuse.
Address address_of(const ClientConfig &config, const Endpoint &endpoint, const std::string &bucket,
                   const std::string &key, const std::string &query = "");

// The proxy settings s3torch's CRT connections take (the client's, the credential providers'):
// the proxy the environment names when `enabled` ($HTTPS_PROXY for https, a CONNECT tunnel;
// $HTTP_PROXY for http, forwarding; $NO_PROXY honoured by aws-c-http), else none. Static: it
// outlives whatever it is given to.
const proxy_env_var_settings *env_proxy_settings(bool enabled);

using Headers = std::vector<std::pair<std::string, std::string>>;

struct ErrorContext;

// Throw InvalidArgument if the context's bucket (or, when `need_key`, key) is empty.
void require_names(const ErrorContext &ctx, bool need_key = true);

struct ByteRange {
    uint64_t start = 0;
    uint64_t length = 0;  // > 0
};

// "Range: bytes=a-b" for [start, start + length).
void add_range_header(Headers &headers, const ByteRange &range);

// `etag` as an If-Match value: quoted as S3 sends it (a bare value gets its quotes); empty for
// a weak ETag (W/"..."), which no If-Match can match. Throws
// InvalidArgument for anything but printable ASCII: an ETag comes from a server's answer or
// a listing, and must never add a header line or bytes of its own to a request.
std::string checked_etag(const std::string &etag, const ErrorContext &ctx);

// A new request message (caller owns it). Adds Host; `headers` are added as given.
aws_http_message *make_message(const char *method, const Address &addr, const Headers &headers = {});

}  // namespace s3torch
