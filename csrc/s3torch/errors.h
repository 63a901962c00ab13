// Typed errors of the s3torch core.
//
// Every failure the core reports is an S3Error: a CRT error code, an S3 error response
// (code, message, HTTP status, request id), or a bad argument caught before any request.
// `kind` is the one classification the bindings use to pick an exception type, so the
// mapping from CRT/S3 conditions to kinds lives here and nowhere else.
#pragma once

#include <stdexcept>
#include <string>

struct aws_s3_meta_request_result;
struct aws_http_headers;

namespace s3torch {

enum class ErrorKind {
    Generic,          // any other S3 or transport failure
    NotFound,         // NoSuchKey, NoSuchBucket, 404
    AccessDenied,     // 403, bad or missing credentials
    Timeout,          // socket / first-byte / throughput timeouts
    Connection,       // no connection to the endpoint: refused, reset, closed, DNS, no route
    InvalidArgument,  // caught before a request was made (bad config, short buffer, ...)
    Cancelled,        // the caller cancelled (KeyboardInterrupt, abort)
    // A GET whose If-Match (the caller's, or the CRT's own between the parts of one GET) no
    // longer holds, 412: the object was replaced while it was being read.
    ObjectChanged,
    // A create-only write (If-None-Match: *, PutOptions::if_none_match) found the key holding
    // an object, 412: nothing was written.
    ObjectExists,
};

struct ErrorContext {
    std::string operation;  // "GetObject", "PutObject", ...
    std::string bucket;
    std::string key;
    // CopyObject only: the source. A copy that fails NotFound names it (the missing object is
    // the source; a missing destination bucket is NoSuchBucket).
    std::string source_bucket;
    std::string source_key;
};

class S3Error : public std::runtime_error {
  public:
    S3Error(ErrorKind kind, const std::string &message, ErrorContext ctx = {});

    ErrorKind kind;
    ErrorContext context;
    std::string s3_code;     // S3 error code from the response body, e.g. "NoSuchKey"
    std::string s3_message;  // S3 error message from the response body
    std::string request_id;  // x-amz-request-id
    int http_status = 0;
    int crt_error = 0;  // aws_last_error()-style code, 0 when none
    std::string crt_error_name;
};

// Raise an InvalidArgument error naming the bucket/key.
[[noreturn]] void throw_invalid(const std::string &message, const ErrorContext &ctx = {});

// Raise the error for a transfer used in a process other than the one that started it (a
// fork()ed child): its CRT threads do not exist there, so it would never finish.
[[noreturn]] void throw_forked(const ErrorContext &ctx, long owner_pid);

// Build the error for a failed meta request from its result (error code, status, headers, body).
S3Error error_from_result(int crt_error, int http_status, const std::string &error_body, const std::string &request_id,
                          const std::string &failed_operation, const ErrorContext &ctx);

// Build the error a server reported for one item of a batch whose request succeeded (an
// <Error> of a DeleteObjects answer): typed by its code, as error_from_result types a request's.
S3Error error_for_item(const std::string &code, const std::string &message, const std::string &request_id,
                       const ErrorContext &ctx);

// Build the error for a bare CRT error code (no HTTP response).
S3Error error_from_crt(int crt_error, const ErrorContext &ctx);

// `text` safe to show on a terminal: each byte that is not part of valid UTF-8, each control
// character (C0 but for none, DEL, C1) and each Unicode character that reorders or hides text
// (bidirectional overrides and isolates, zero-width and line separators, tags) written as an
// escape spelled as Python's ascii() spells it (\t \n \r, \xNN, \uNNNN; a byte of no valid
// sequence as \xNN). A key or a server's message can hold any of them; shown raw, an escape
// sequence would drive the terminal and a CR or an override hide what is there. Python's
// S3Exception.__str__ (python/s3torch/_text.py) then escapes what else is not printable.
std::string printable(const std::string &text);

// "<operation> s3://bucket/key" (the parts that are set), as every error message begins.
std::string describe(const ErrorContext &ctx);

// Name of a CRT error code, e.g. "AWS_IO_SOCKET_TIMEOUT".
std::string crt_error_name(int crt_error);

// Whether a CRT error code is a credentials or signing failure (no credentials, a provider
// that failed): the request never reached the server.
bool is_auth_failure(int crt_error);

// `e` with "; <more>" added to its message (every field kept).
S3Error with_hint(const S3Error &e, const std::string &more);

// For an answer that says the bucket lives in another region than the client signs for (301
// PermanentRedirect, 400 AuthorizationHeaderMalformed): which region, from the response's
// x-amz-bucket-region header or the error's <Region>, and what to do. "" otherwise (and when
// the region named is not a well-formed one, or is the client's own). boto3 follows such a
// redirect itself; s3torch signs for one region and says so instead.
std::string wrong_region_hint(const S3Error &e, const std::string &header_region, const std::string &error_body,
                              const std::string &client_region);

// What to tell the user when the TLS handshake with the endpoint failed.
extern const char *const kTlsRefusedHint;

}  // namespace s3torch
