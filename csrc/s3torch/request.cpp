#include "s3torch/request.h"

#include "s3torch/errors.h"

#include <aws/common/byte_buf.h>
#include <aws/common/uri.h>
#include <aws/http/proxy.h>
#include <aws/http/request_response.h>

#include <cctype>

namespace s3torch {

namespace {

std::string encode(const std::string &in, bool path) {
    aws_byte_buf buf;
    aws_byte_buf_init(&buf, aws_default_allocator(), in.size() * 3 + 1);
    aws_byte_cursor cur = aws_byte_cursor_from_array(in.data(), in.size());
    int rc =
        path ? aws_byte_buf_append_encoding_uri_path(&buf, &cur) : aws_byte_buf_append_encoding_uri_param(&buf, &cur);
    std::string out = rc == AWS_OP_SUCCESS ? std::string(reinterpret_cast<char *>(buf.buffer), buf.len) : in;
    aws_byte_buf_clean_up(&buf);
    return out;
}

bool is_ip_or_localhost(const std::string &host) {
    if (host == "localhost" || host.find(':') != std::string::npos) return true;
    for (char c : host)
        if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.')) return false;
    return true;
}

// Whether requests for this endpoint/bucket use path-style addressing.
bool use_path_style(const ClientConfig &config, const Endpoint &endpoint, const std::string &bucket) {
    if (config.force_path_style) return true;
    // A bucket cannot be a DNS label of an IP address or localhost; and with TLS a dotted
    // bucket name breaks the wildcard certificate. Both fall back to path-style.
    if (endpoint.custom && is_ip_or_localhost(endpoint.host)) return true;
    if (endpoint.tls && bucket.find('.') != std::string::npos) return true;
    return false;
}

}  // namespace

std::string encode_path(const std::string &key) { return encode(key, true); }
std::string encode_param(const std::string &value) { return encode(value, false); }

std::string decode_param(const std::string &value) {
    aws_byte_buf buf;
    aws_byte_buf_init(&buf, aws_default_allocator(), value.size() + 1);
    aws_byte_cursor cur = aws_byte_cursor_from_array(value.data(), value.size());
    int rc = aws_byte_buf_append_decoding_uri(&buf, &cur);
    std::string out = rc == AWS_OP_SUCCESS ? std::string(reinterpret_cast<char *>(buf.buffer), buf.len) : value;
    aws_byte_buf_clean_up(&buf);
    return out;
}

Address address_of(const ClientConfig &config, const Endpoint &endpoint, const std::string &bucket,
                   const std::string &key, const std::string &query) {
    Address a;
    std::string scheme, base;  // base: the bucket's root, "" or "/bucket" (path-style)
    if (!endpoint.custom || is_arn(bucket)) {
        ResolvedEndpoint r = resolve_aws_endpoint(config.region, bucket, endpoint.aws,
                                                  endpoint.custom ? endpoint.url() : "", config.force_path_style);
        const size_t sep = r.url.find("://");
        scheme = r.url.substr(0, sep);
        const size_t slash = r.url.find('/', sep + 3);
        a.host = r.url.substr(sep + 3, slash == std::string::npos ? std::string::npos : slash - sep - 3);
        if (slash != std::string::npos) base = r.url.substr(slash);
        a.signing = r.signing;
    } else {
        scheme = endpoint.tls ? "https" : "http";
        const bool path_style = use_path_style(config, endpoint, bucket);
        a.host = path_style ? endpoint.authority() : bucket + "." + endpoint.authority();
        if (path_style) base = "/" + encode_path(bucket);
    }
    a.path = base.empty() ? "/" : base + (key.empty() && query.empty() ? "" : "/");
    a.path += encode_path(key);
    if (!query.empty()) a.path += "?" + query;
    a.endpoint_uri = scheme + "://" + a.host;
    return a;
}

const proxy_env_var_settings *env_proxy_settings(bool enabled) {
    static const proxy_env_var_settings on = {AWS_HPEV_ENABLE, AWS_HPCT_HTTP_LEGACY, nullptr};
    static const proxy_env_var_settings off = {AWS_HPEV_DISABLE, AWS_HPCT_HTTP_LEGACY, nullptr};
    return enabled ? &on : &off;
}

void require_names(const ErrorContext &ctx, bool need_key) {
    if (ctx.bucket.empty()) throw_invalid("bucket name is empty", ctx);
    if (need_key && ctx.key.empty()) throw_invalid("key is empty", ctx);
}

void add_range_header(Headers &headers, const ByteRange &range) {
    headers.emplace_back("Range",
                         "bytes=" + std::to_string(range.start) + "-" + std::to_string(range.start + range.length - 1));
}

std::string checked_etag(const std::string &etag, const ErrorContext &ctx) {
    for (char c : etag)
        if (c < 0x21 || c > 0x7e) throw_invalid("if_match is not an ETag (printable ASCII, no spaces)", ctx);
    // A weak ETag (W/"..."), which S3 never sends but a proxy may: If-Match compares strongly,
    // so it would fail every read. The version is then not held.
    if (etag.compare(0, 2, "W/") == 0) return {};
    if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') return etag;
    return "\"" + etag + "\"";
}

aws_http_message *make_message(const char *method, const Address &addr, const Headers &headers) {
    aws_http_message *msg = aws_http_message_new_request(aws_default_allocator());
    if (!msg) throw error_from_crt(aws_last_error(), {});
    aws_http_message_set_request_method(msg, aws_byte_cursor_from_c_str(method));
    aws_http_message_set_request_path(msg, aws_byte_cursor_from_array(addr.path.data(), addr.path.size()));
    aws_http_header host;
    AWS_ZERO_STRUCT(host);
    host.name = aws_byte_cursor_from_c_str("Host");
    host.value = aws_byte_cursor_from_array(addr.host.data(), addr.host.size());
    aws_http_message_add_header(msg, host);
    for (const auto &kv : headers) {
        aws_http_header h;
        AWS_ZERO_STRUCT(h);
        h.name = aws_byte_cursor_from_array(kv.first.data(), kv.first.size());
        h.value = aws_byte_cursor_from_array(kv.second.data(), kv.second.size());
        aws_http_message_add_header(msg, h);
    }
    return msg;
}

}  // namespace s3torch
