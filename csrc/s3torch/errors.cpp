#include "s3torch/errors.h"

#include "s3torch/xml.h"

#include <aws/auth/auth.h>
#include <aws/common/error.h>
#include <aws/http/http.h>
#include <aws/io/io.h>
#include <aws/s3/s3.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace s3torch {

namespace {

// s3torchconnector's words for a missing object, kept in our messages because user code
// matches on them: its HeadObject says "The object was not found", its GetObject "The key
// does not exist" (so does ours for a reader's size lookup: to the user it is the read that
// failed). The typed class (S3NotFoundError) and .code stay the contract.
const char *peer_phrase(ErrorKind kind, const std::string &code, const std::string &operation) {
    if (kind != ErrorKind::NotFound) return nullptr;
    if (code == "NoSuchKey" || (code == "NotFound" && operation == "GetObject"))
        return "Service error: The key does not exist";
    if (code == "NotFound") return "Service error: The object was not found";
    return nullptr;
}

bool is_timeout(int code) {
    switch (code) {
        case AWS_IO_SOCKET_TIMEOUT:
        case AWS_ERROR_HTTP_RESPONSE_FIRST_BYTE_TIMEOUT:
        case AWS_ERROR_HTTP_CHANNEL_THROUGHPUT_FAILURE:
        case AWS_IO_TLS_NEGOTIATION_TIMEOUT:
        case AWS_ERROR_HTTP_CONNECTION_MANAGER_ACQUISITION_TIMEOUT: return true;
        default: return false;
    }
}

bool is_connection_failure(int code) {
    switch (code) {
        case AWS_IO_SOCKET_CONNECTION_REFUSED:
        case AWS_IO_SOCKET_CLOSED:
        case AWS_IO_SOCKET_NOT_CONNECTED:
        case AWS_IO_SOCKET_NO_ROUTE_TO_HOST:
        case AWS_IO_SOCKET_NETWORK_DOWN:
        case AWS_IO_SOCKET_CONNECT_ABORTED:
        case AWS_IO_BROKEN_PIPE:
        case AWS_IO_DNS_QUERY_FAILED:
        case AWS_IO_DNS_INVALID_NAME:
        case AWS_IO_DNS_NO_ADDRESS_FOR_HOST:
        case AWS_IO_DNS_HOST_REMOVED_FROM_CACHE:
        case AWS_ERROR_HTTP_CONNECTION_CLOSED:
        case AWS_ERROR_HTTP_SERVER_CLOSED:
        case AWS_ERROR_HTTP_PROXY_CONNECT_FAILED:
        case AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE: return true;
        default: return false;
    }
}

ErrorKind kind_for_s3(const std::string &code, int status) {
    if (code == "NoSuchKey" || code == "NoSuchBucket" || code == "NoSuchUpload" || code == "NotFound" ||
        (code.empty() && status == 404))
        return ErrorKind::NotFound;
    if (code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" ||
        code == "ExpiredToken" || code == "InvalidToken" || code == "AllAccessDisabled" ||
        code == "RequestTimeTooSkewed" || code == "TokenRefreshRequired" || status == 403 || status == 401)
        return ErrorKind::AccessDenied;
    if (code == "RequestTimeout" || status == 408) return ErrorKind::Timeout;
    return ErrorKind::Generic;
}

const char *hint_for(ErrorKind kind, const std::string &code) {
    // Access failures whose code says more than "check the credentials".
    if (code == "RequestTimeTooSkewed")
        return "this machine's clock differs from the server's by more than S3 allows (15 minutes); set it right "
               "(NTP)";
    if (code == "ExpiredToken" || code == "TokenRefreshRequired")
        return "the session token has expired; get fresh credentials (the default provider chain refreshes role "
               "and instance credentials itself; static ones do not)";
    if (code == "ConditionalRequestConflict")
        return "another write to this key was in progress while this create-only one completed; nothing was "
               "written: write again";
    if (code == "SignatureDoesNotMatch")
        return "the secret key does not match the access key id (or something between rewrote the request); check "
               "both keys";
    if (code == "InvalidAccessKeyId")
        return "the server does not know this access key id; check the keys, and that the endpoint is the one they "
               "belong to";
    switch (kind) {
        case ErrorKind::NotFound:
            if (code == "NoSuchBucket") return "check the bucket name and the endpoint/region";
            return "check the bucket and key (list the prefix to see what exists)";
        case ErrorKind::AccessDenied:
            return "check the credentials (keys, profile, AWS_* environment) and the bucket policy";
        case ErrorKind::Timeout:
            return "the endpoint did not answer in time; check the endpoint and network, or raise retry_timeout_s "
                   "(max_attempts when it is 0)";
        case ErrorKind::ObjectExists:
            return "the key already holds an object, and this write was create-only (exclusive): nothing was "
                   "written; write to another key, or delete the object first";
        case ErrorKind::ObjectChanged:
            return "the object was replaced while it was being read: its ETag is no longer the one of the bytes "
                   "read first, so they would mix two versions; read it again (from the start) once the writer "
                   "is done";
        default: return nullptr;
    }
}

}  // namespace

std::string describe(const ErrorContext &ctx) {
    std::string where;
    if (!ctx.bucket.empty()) {
        where = "s3://" + ctx.bucket;
        if (!ctx.key.empty()) where += "/" + ctx.key;
    }
    std::string out = ctx.operation.empty() ? std::string() : ctx.operation;
    if (!ctx.source_key.empty())
        out += " s3://" + ctx.source_bucket + "/" + ctx.source_key + (where.empty() ? "" : " to");
    if (!where.empty()) out += (out.empty() ? "" : " ") + where;
    return out;
}

namespace {

// Unicode characters shown escaped although printable by category alone: they reorder, hide
// or break the text around them (Trojan Source: bidirectional controls).
bool hides_text(uint32_t cp) {
    return cp == 0x061C || (cp >= 0x200B && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202E) ||
           (cp >= 0x2060 && cp <= 0x206F) || cp == 0xFEFF || (cp >= 0xFFF9 && cp <= 0xFFFB) ||
           (cp >= 0xE0000 && cp <= 0xE007F);
}

// The code point of the UTF-8 sequence at s[i] and its length; 0 when there is none (a byte
// that cannot start one, a missing or bad continuation, an overlong form, a surrogate, past U+10FFFF).
size_t utf8_at(const std::string &s, size_t i, uint32_t &cp) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return 0;
    cp = c & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
    for (size_t k = 1; k < n; ++k) {
        const auto d = static_cast<unsigned char>(s[i + k]);
        if ((d & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (d & 0x3F);
    }
    static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return 0;
    return n;
}

}  // namespace

std::string printable(const std::string &text) {
    std::string out;
    out.reserve(text.size());
    char esc[16];
    for (size_t i = 0; i < text.size();) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c >= 0x20 && c < 0x7F) {
            out += static_cast<char>(c);
            ++i;
            continue;
        }
        uint32_t cp = 0;
        const size_t n = c < 0x80 ? 0 : utf8_at(text, i, cp);
        if (n == 0) {  // C0, DEL, or a byte of no valid sequence
            if (c == '\t' || c == '\n' || c == '\r') {
                out += c == '\t' ? "\\t" : c == '\n' ? "\\n" : "\\r";
            } else {
                std::snprintf(esc, sizeof esc, "\\x%02x", c);
                out += esc;
            }
            ++i;
        } else if (cp <= 0x9F || hides_text(cp)) {  // C1, and the hiding ones; spelled as Python's ascii()
            std::snprintf(esc, sizeof esc,
                          cp <= 0xFF     ? "\\x%02x"
                          : cp <= 0xFFFF ? "\\u%04x"
                                         : "\\U%08x",
                          static_cast<unsigned>(cp));
            out += esc;
            i += n;
        } else {
            out.append(text, i, n);
            i += n;
        }
    }
    return out;
}

S3Error::S3Error(ErrorKind k, const std::string &message, ErrorContext ctx)
    : std::runtime_error(message), kind(k), context(std::move(ctx)) {}

void throw_invalid(const std::string &message, const ErrorContext &ctx) {
    std::string where = describe(ctx);
    throw S3Error(ErrorKind::InvalidArgument, where.empty() ? message : where + ": " + message, ctx);
}

void throw_forked(const ErrorContext &ctx, long owner_pid) {
    throw_invalid("this transfer was started in process " + std::to_string(owner_pid) +
                      " and cannot be used in a fork()ed child (process " +
                      std::to_string(static_cast<long>(getpid())) + "); start it again here",
                  ctx);
}

bool is_auth_failure(int code) {
    const char *name = aws_error_name(code);
    return name != nullptr &&
           (std::strstr(name, "CREDENTIALS") != nullptr || std::strstr(name, "AWS_AUTH_SIGNING") != nullptr);
}

std::string wrong_region_hint(const S3Error &e, const std::string &header_region, const std::string &error_body,
                              const std::string &client_region) {
    if (!(e.http_status == 301 || e.s3_code == "PermanentRedirect" || e.s3_code == "AuthorizationHeaderMalformed"))
        return "";
    std::string region = header_region.empty() ? xml_first_text(error_body, "Region") : header_region;
    bool well_formed = !region.empty() && region.size() <= 32 && std::all_of(region.begin(), region.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    });
    if (!well_formed || region == client_region) return "";
    return "bucket '" + e.context.bucket + "' is in region " + region + ", not " + client_region +
           ": make the client with region='" + region +
           "' (s3torch signs for one region and does not follow the redirect)";
}

S3Error with_hint(const S3Error &e, const std::string &more) {
    S3Error out(e.kind, std::string(e.what()) + "; " + more, e.context);
    out.s3_code = e.s3_code;
    out.s3_message = e.s3_message;
    out.request_id = e.request_id;
    out.http_status = e.http_status;
    out.crt_error = e.crt_error;
    out.crt_error_name = e.crt_error_name;
    return out;
}

const char *const kTlsRefusedHint =
    "the TLS handshake with the endpoint failed: its certificate is not trusted (for a private certificate "
    "authority set ca_file or $AWS_CA_BUNDLE), or names another host, or it shares no TLS version with this client";

std::string crt_error_name(int crt_error) {
    const char *name = aws_error_name(crt_error);
    return name ? name : "UNKNOWN";
}

S3Error error_from_crt(int crt_error, const ErrorContext &ctx) {
    ErrorKind kind = ErrorKind::Generic;
    if (is_timeout(crt_error)) kind = ErrorKind::Timeout;
    else if (is_connection_failure(crt_error)) kind = ErrorKind::Connection;
    else if (is_auth_failure(crt_error)) kind = ErrorKind::AccessDenied;
    else if (crt_error == AWS_ERROR_S3_CANCELED) kind = ErrorKind::Cancelled;
    else if (crt_error == AWS_ERROR_SHORT_BUFFER || crt_error == AWS_ERROR_INVALID_ARGUMENT)
        kind = ErrorKind::InvalidArgument;
    std::string msg = describe(ctx);
    if (!msg.empty()) msg += ": ";
    msg += crt_error_name(crt_error) + " (" + aws_error_str(crt_error) + ")";
    const char *hint = hint_for(kind, "");
    if (crt_error == AWS_IO_SOCKET_CONNECTION_REFUSED || crt_error == AWS_IO_DNS_INVALID_NAME ||
        crt_error == AWS_IO_DNS_QUERY_FAILED)
        hint = "nothing answers at the endpoint; check the endpoint URL and that the server is running";
    if (crt_error == AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE) hint = kTlsRefusedHint;
    if (crt_error == AWS_ERROR_HTTP_PROXY_CONNECT_FAILED)
        hint =
            "the proxy ($HTTPS_PROXY / $HTTP_PROXY) did not open a connection to the endpoint; check the proxy, "
            "or list the endpoint's host in $NO_PROXY if it is to be reached directly";
    if (crt_error == AWS_ERROR_HTTP_CHANNEL_THROUGHPUT_FAILURE)
        hint =
            "no byte moved on the connection for stall_timeout_s (the server or the network went silent mid-request); "
            "check the endpoint and network, or raise stall_timeout_s for a server that thinks longer before it "
            "answers";
    if (crt_error == AWS_ERROR_S3_RESPONSE_CHECKSUM_MISMATCH)
        hint =
            "the bytes received differ from the checksum the server stores for them: corrupted in transit or at "
            "rest, or the object changed during the read; the destination holds them, do not use it";
    if (hint) msg += "; " + std::string(hint);
    S3Error err(kind, msg, ctx);
    err.crt_error = crt_error;
    err.crt_error_name = crt_error_name(crt_error);
    return err;
}

namespace {

// The error for a server's `code` and `message` (what error_from_result read from a body, or
// one item of a batch answer: http_status 0).
S3Error compose_error(const std::string &code, const std::string &message, int http_status,
                      const std::string &request_id, const std::string &failed_operation, int crt_error,
                      const ErrorContext &ctx) {
    ErrorKind kind = kind_for_s3(code, http_status);
    // Only reads send If-Match (ours, or aws-c-s3's between the parts of one GET).
    if (ctx.operation == "GetObject" && (http_status == 412 || code == "PreconditionFailed"))
        kind = ErrorKind::ObjectChanged;
    // Only create-only writes send a precondition (If-None-Match: *, on the PutObject or the
    // CompleteMultipartUpload).
    if (ctx.operation == "PutObject" && (http_status == 412 || code == "PreconditionFailed"))
        kind = ErrorKind::ObjectExists;
    // A copy whose object is missing: the source is (the destination is only written).
    bool missing_source = kind == ErrorKind::NotFound && !ctx.source_key.empty() && code != "NoSuchBucket";
    std::string msg = describe(ctx);
    if (!failed_operation.empty() && failed_operation != ctx.operation) msg += " (" + failed_operation + ")";
    if (!msg.empty()) msg += ": ";
    msg += code.empty() ? ("HTTP " + std::to_string(http_status)) : code;
    if (!message.empty()) msg += ": " + message;
    if (http_status) {
        msg += " (HTTP " + std::to_string(http_status);
        if (!request_id.empty()) msg += ", request id " + request_id;
        msg += ")";
    } else if (!request_id.empty()) {
        msg += " (request id " + request_id + ")";
    }
    if (missing_source) msg += "; the copy source s3://" + ctx.source_bucket + "/" + ctx.source_key + " does not exist";
    else if (const char *hint = hint_for(kind, code)) msg += "; " + std::string(hint);
    if (const char *phrase = peer_phrase(kind, code, ctx.operation)) msg += " (" + std::string(phrase) + ")";
    S3Error err(kind, msg, ctx);
    if (missing_source) {  // .bucket and .key name the object that is missing
        err.context.bucket = ctx.source_bucket;
        err.context.key = ctx.source_key;
    }
    err.s3_code = code;
    err.s3_message = message;
    err.request_id = request_id;
    err.http_status = http_status;
    err.crt_error = crt_error;
    err.crt_error_name = crt_error_name(crt_error);
    return err;
}

}  // namespace

S3Error error_from_result(int crt_error, int http_status, const std::string &error_body, const std::string &request_id,
                          const std::string &failed_operation, const ErrorContext &ctx) {
    std::string code, message;
    if (!error_body.empty()) {
        code = xml_first_text(error_body, "Code");
        message = xml_first_text(error_body, "Message");
    }
    // No answer, or the answers were fine (no error document) and the client failed after them
    // (e.g. the whole download's checksum did not match): the CRT's error says what went wrong.
    const bool answered_ok = http_status >= 200 && http_status < 300 && crt_error != 0 && code.empty();
    if ((http_status == 0 || answered_ok) && crt_error != AWS_ERROR_S3_INVALID_RESPONSE_STATUS) {
        return error_from_crt(crt_error, ctx);
    }
    // A request aws-c-s3 classified by its code and kept no body of (Transfer::raise_if_failed).
    if (code.empty() && crt_error == AWS_ERROR_S3_REQUEST_TIME_TOO_SKEWED) code = "RequestTimeTooSkewed";
    if (code.empty() && http_status == 404) code = "NotFound";
    if (code.empty() && http_status == 403) code = "AccessDenied";
    // A 5xx whose retries ran out: the CRT keeps no body, only its classification.
    if (code.empty() && crt_error == AWS_ERROR_S3_SLOW_DOWN) code = "SlowDown";
    if (code.empty() && crt_error == AWS_ERROR_S3_INTERNAL_ERROR && http_status == 500) code = "InternalError";
    return compose_error(code, message, http_status, request_id, failed_operation, crt_error, ctx);
}

S3Error error_for_item(const std::string &code, const std::string &message, const std::string &request_id,
                       const ErrorContext &ctx) {
    S3Error err = compose_error(code, message, 0, request_id, "", 0, ctx);
    err.crt_error_name.clear();  // no CRT error: the request succeeded
    return err;
}

}  // namespace s3torch
