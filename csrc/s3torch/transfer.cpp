#include "s3torch/transfer.h"

#include "s3torch/client.h"
#include "s3torch/completions.h"
#include "s3torch/credentials.h"
#include "s3torch/endpoint_health.h"
#include "s3torch/request.h"
#include "s3torch/request_headers.h"
#include "s3torch/retry.h"
#include "s3torch/retrying_credentials.h"

#include <aws/common/uri.h>
#include <aws/http/request_response.h>
#include <aws/s3/s3_client.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstring>
#include <optional>

namespace s3torch {

namespace {

// Signalled whenever any transfer of this process finishes (wait_any). One per process: a
// fork()ed child makes its own and leaks its parent's, whose lock a gone thread may hold.
struct AnyFinished {
    pid_t pid = getpid();
    std::mutex mu;
    std::condition_variable cv;
    uint64_t finished = 0;  // mu: transfers finished so far
};

std::atomic<AnyFinished *> g_any_finished{nullptr};

AnyFinished &any_finished() {
    AnyFinished *current = g_any_finished.load(std::memory_order_acquire);
    if (current != nullptr && current->pid == getpid()) return *current;
    auto *fresh = new AnyFinished();
    if (g_any_finished.compare_exchange_strong(current, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread of this process installed one first
    return *current;
}

}  // namespace

int upload_checksum(const ClientConfig &config) {
    const std::optional<CrcAlgorithm> crc = config.upload_crc();
    if (!crc) return AWS_SCA_NONE;
    switch (*crc) {
        case CrcAlgorithm::Crc32: return AWS_SCA_CRC32;
        case CrcAlgorithm::Crc32c: return AWS_SCA_CRC32C;
        case CrcAlgorithm::Crc64Nvme: return AWS_SCA_CRC64NVME;
    }
    return AWS_SCA_NONE;
}

int64_t wait_any(const std::vector<Transfer *> &transfers, int64_t timeout_ms) {
    if (transfers.empty()) throw_invalid("wait_any needs at least one transfer", ErrorContext{});
    for (Transfer *t : transfers) t->require_owner(t->context());
    AnyFinished &any = any_finished();
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max<int64_t>(timeout_ms, 0));
    std::unique_lock<std::mutex> lock(any.mu);
    for (;;) {
        const uint64_t seen = any.finished;
        lock.unlock();  // done() takes each transfer's own lock; never both at once
        for (size_t i = 0; i < transfers.size(); ++i)
            if (transfers[i]->done()) return static_cast<int64_t>(i);
        lock.lock();
        // A finish after `seen` was read has bumped the count: look again before waiting.
        auto changed = [&] { return any.finished != seen; };
        if (timeout_ms < 0) any.cv.wait(lock, changed);
        else if (!any.cv.wait_until(lock, deadline, changed)) return -1;
    }
}

Transfer::Transfer(std::shared_ptr<Client> client, ErrorContext ctx)
    : client_(std::move(client)), ctx_(std::move(ctx)) {}

Transfer::~Transfer() = default;

void Transfer::start(aws_s3_meta_request_options &options, const char *method, const Address &addr,
                     const Headers &headers) {
    // The meta request takes its own reference to the message; ours ends with this scope.
    // What the configuration adds (User-Agent, encryption, requester pays, the bucket owner:
    // request_headers.h).
    // aws-c-s3 appends its own product token to the User-Agent.
    Headers all = headers;
    for (auto &h : configured_headers(client_->config(), ctx_.operation)) all.push_back(std::move(h));
    std::unique_ptr<aws_http_message, void (*)(aws_http_message *)> msg(
        make_message(method, addr, all), [](aws_http_message *m) { aws_http_message_release(m); });
    options.message = msg.get();
    want_body_ = options.recv_buffer == nullptr;
    options.user_data = this;
    options.headers_callback = s_on_headers;
    if (want_body_) options.body_callback_ex = s_on_body;
    options.finish_callback = s_on_finish;
    options.telemetry_callback = s_on_telemetry;

    // Uploads (not server-side copies) carry a checksum of their body the server verifies
    // before storing it; each part of a multipart upload its own. Downloads check the
    // checksum a response carries for its own body (a whole object, never a range of one).
    aws_s3_checksum_config checksum;  // copied by the meta request when it is made
    AWS_ZERO_STRUCT(checksum);
    auto algorithm = static_cast<aws_s3_checksum_algorithm>(upload_checksum(client_->config()));
    if (!options.checksum_config && algorithm != AWS_SCA_NONE) {
        if (std::strcmp(method, "PUT") == 0 && options.copy_source_uri.len == 0) {
            checksum.location = AWS_SCL_HEADER;
            checksum.checksum_algorithm = algorithm;
            options.checksum_config = &checksum;
        } else if (options.type == AWS_S3_META_REQUEST_TYPE_GET_OBJECT) {
            checksum.validate_response_checksum = true;
            options.checksum_config = &checksum;
        }
    }
    options.shutdown_callback = s_on_shutdown;

    aws_uri uri;
    aws_byte_cursor uri_cur = aws_byte_cursor_from_array(addr.endpoint_uri.data(), addr.endpoint_uri.size());
    if (aws_uri_init_parse(&uri, aws_default_allocator(), &uri_cur))
        throw_invalid("cannot parse endpoint '" + addr.endpoint_uri + "'", ctx_);
    options.endpoint = &uri;

    start_ns_ = monotonic_ns();
    self_ = shared_from_this();
    aws_s3_meta_request *mr = client_->make_meta_request(options, addr.signing);
    aws_uri_clean_up(&uri);
    if (!mr) {
        int err = aws_last_error();
        self_.reset();
        throw error_from_crt(err, ctx_);
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (!finished_) mr_ = mr;
        else aws_s3_meta_request_release(mr);  // finished before we got here
    }
    // An endpoint that accepts connections and never answers would hold this transfer for
    // stall_timeout_s per attempt, then retry: give up sooner, while it has never answered at
    // all, unless the user raised stall_timeout_s (retry.h).
    if (!client_->reached()) watch_unanswered();
}

void Transfer::watch_unanswered() {
    std::weak_ptr<Transfer> weak = shared_from_this();
    client_->run_after(unanswered_ms(client_->config().stall_timeout_s), [weak] {
        std::shared_ptr<Transfer> t = weak.lock();
        if (!t || t->client_->reached()) return;
        if (credentials_retrying()) {  // still unsigned, waiting on STS: watch again
            t->watch_unanswered();
            return;
        }
        {
            std::lock_guard<std::mutex> lock(t->mu_);
            // An attempt that ended (refused, reset) is the retry budget's to judge.
            if (t->finished_ || t->attempted_) return;
            t->unanswered_ = true;
        }
        t->cancel_meta_request();
    });
}

void Transfer::start_get_object(const std::optional<ByteRange> &range, aws_byte_buf *recv_buffer, uint64_t read_window,
                                const std::string &if_match) {
    Headers headers;
    if (range) add_range_header(headers, *range);
    if (!if_match.empty()) {
        std::string value = checked_etag(if_match, ctx_);
        if (!value.empty()) headers.emplace_back("If-Match", std::move(value));
    }
    aws_s3_meta_request_options o;
    AWS_ZERO_STRUCT(o);
    o.type = AWS_S3_META_REQUEST_TYPE_GET_OBJECT;
    o.recv_buffer = recv_buffer;
    if (recv_buffer) o.progress_callback = s_on_get_progress;
    start(o, "GET", address_of(client_->config(), client_->endpoint(), ctx_.bucket, ctx_.key), headers);
    increment_read_window(read_window);
}

void Transfer::s_on_get_progress(aws_s3_meta_request *, const aws_s3_meta_request_progress *progress, void *user_data) {
    auto *t = static_cast<Transfer *>(user_data);
    std::lock_guard<std::mutex> lock(t->mu_);
    t->delivered_ += progress->bytes_transferred;
}

aws_s3_meta_request *Transfer::acquire_meta_request() {
    std::lock_guard<std::mutex> lock(mu_);
    return mr_ ? aws_s3_meta_request_acquire(mr_) : nullptr;
}

void Transfer::increment_read_window(uint64_t bytes) {
    if (aws_s3_meta_request *mr = acquire_meta_request()) {
        aws_s3_meta_request_increment_read_window(mr, bytes);
        aws_s3_meta_request_release(mr);
    }
}

bool Transfer::wait_for(int64_t timeout_ms) {
    require_owner(ctx_);
    std::unique_lock<std::mutex> lock(mu_);
    if (timeout_ms < 0) {
        cv_.wait(lock, [&] { return finished_; });
        return true;
    }
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return finished_; });
}

bool Transfer::done() {
    if (foreign()) return false;  // never finishes here (and its lock may be held by a thread that is gone)
    std::lock_guard<std::mutex> lock(mu_);
    return finished_;
}

void Transfer::cancel() {
    if (foreign()) return;  // nothing runs it here
    {
        std::lock_guard<std::mutex> lock(mu_);
        cancelled_ = true;
    }
    cancel_meta_request();
    cancel_parts();
}

void Transfer::cancel_meta_request() {
    if (aws_s3_meta_request *mr = acquire_meta_request()) {
        aws_s3_meta_request_cancel(mr);
        aws_s3_meta_request_release(mr);
    }
}

void Transfer::cancel_and_wait() {
    if (foreign() || done()) return;
    cancel();
    wait();
}

void Transfer::raise_if_failed() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!finished_ || error_code_ == 0) return;
    if (!own_error_.empty()) {
        if (own_kind_ == ErrorKind::InvalidArgument) throw_invalid(own_error_, ctx_);
        S3Error err(own_kind_, own_error_, ctx_);
        err.crt_error = error_code_;
        err.crt_error_name = crt_error_name(error_code_);
        err.http_status = status_;
        err.request_id = request_id_;
        throw err;
    }
    if (skewed_ && !cancelled_)
        throw error_from_result(AWS_ERROR_S3_REQUEST_TIME_TOO_SKEWED, last_error_status_, error_body_,
                                last_error_request_id_, failed_operation_, ctx_);
    if ((unanswered_ || cancelled_) && error_code_ == AWS_ERROR_S3_CANCELED) {
        // Cancelled by us: by the never-answered watchdog, or by the caller.
        std::string why = !unanswered_ ? "cancelled"
                          : client_->health().tls_refused.load()
                              ? std::string(kTlsRefusedHint)
                              : "no answer from the endpoint in " +
                                    std::to_string(unanswered_ms(client_->config().stall_timeout_s) / 1000) +
                                    " s (it takes connections but never responds); check the endpoint URL and the "
                                    "server";
        S3Error err(unanswered_ ? ErrorKind::Connection : ErrorKind::Cancelled,
                    ctx_.operation + " s3://" + ctx_.bucket + "/" + ctx_.key + ": " + why, ctx_);
        err.crt_error = error_code_;
        err.crt_error_name = crt_error_name(error_code_);
        throw err;
    }
    // A 5xx whose retries ran out: the CRT kept no status; the last failed attempt's is ours.
    bool last_attempt = status_ == 0 && last_error_status_ >= 500 &&
                        (error_code_ == AWS_ERROR_S3_INTERNAL_ERROR || error_code_ == AWS_ERROR_S3_SLOW_DOWN);
    S3Error err = error_from_result(error_code_, last_attempt ? last_error_status_ : status_, error_body_,
                                    last_attempt ? last_error_request_id_ : request_id_, failed_operation_, ctx_);
    // Refused for its credentials (or a 403 that does not say why: a HEAD's has no body): the
    // next client asks for them again.
    if (err.kind == ErrorKind::AccessDenied) client_->credentials_refused();
    std::string hint = wrong_region_hint(err, bucket_region_, error_body_, client_->config().region);
    if (!hint.empty()) throw with_hint(err, hint);
    hint = refusal_hint(err, client_->config());
    if (!hint.empty()) throw with_hint(err, hint);
    if (is_auth_failure(error_code_)) {  // the config file is read here, on this error only
        hint = credentials_hint(client_->config());
        if (!hint.empty()) throw with_hint(err, hint);
    }
    throw err;
}

namespace {

bool printable_ascii(const std::string &s) {
    return std::all_of(s.begin(), s.end(), [](unsigned char c) { return c >= 0x20 && c < 0x7F; });
}

}  // namespace

std::string Transfer::header(const std::string &name) {
    std::lock_guard<std::mutex> lock(mu_);
    return header_locked(name);
}

bool Transfer::commit_attempt_lost() {
    std::lock_guard<std::mutex> lock(mu_);
    return commit_lost_;
}

std::string Transfer::header_locked(const std::string &name) const {
    std::string want = name;
    std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
    want += ": ";
    size_t pos = 0;
    while (pos < headers_.size()) {
        size_t eol = headers_.find('\n', pos);
        if (eol == std::string::npos) eol = headers_.size();
        if (headers_.compare(pos, want.size(), want) == 0)
            return headers_.substr(pos + want.size(), eol - pos - want.size());
        pos = eol + 1;
    }
    return std::string();
}

int Transfer::on_body(const aws_byte_cursor &, uint64_t, void *) { return 0; }

int Transfer::s_on_headers(aws_s3_meta_request *, const aws_http_headers *headers, int status, void *ud) {
    auto *t = static_cast<Transfer *>(ud);
    std::string lines;
    size_t n = aws_http_headers_count(headers);
    for (size_t i = 0; i < n; ++i) {
        aws_http_header h;
        if (aws_http_headers_get_index(headers, i, &h)) continue;
        std::string name(reinterpret_cast<const char *>(h.name.ptr), h.name.len);
        std::string value(reinterpret_cast<const char *>(h.value.ptr), h.value.len);
        // Every header s3torch reads (ETag, sizes, ranges, checksums, dates, ids) is printable
        // ASCII; a value that is not is taken as absent (it could not become a Python str,
        // nor go back out in an If-Match).
        if (!printable_ascii(name) || !printable_ascii(value)) continue;
        std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
        lines += name + ": " + value + "\n";
    }
    std::lock_guard<std::mutex> lock(t->mu_);
    if (status >= 200 && status < 300) {
        t->headers_ = std::move(lines);
        t->status_ = status;
    }
    return AWS_OP_SUCCESS;
}

int Transfer::s_on_body(aws_s3_meta_request *, const aws_byte_cursor *body,
                        const aws_s3_meta_request_receive_body_extra_info info, void *ud) {
    auto *t = static_cast<Transfer *>(ud);
    int err = t->on_body(*body, info.range_start, info.ticket);
    if (err) return aws_raise_error(err);
    return AWS_OP_SUCCESS;
}

void Transfer::s_on_finish(aws_s3_meta_request *, const aws_s3_meta_request_result *result, void *ud) {
    auto *t = static_cast<Transfer *>(ud);
    std::string body, request_id, region, op;
    if (result->error_response_body)
        body.assign(reinterpret_cast<const char *>(result->error_response_body->buffer),
                    result->error_response_body->len);
    if (result->error_response_headers) {
        aws_byte_cursor v;
        if (aws_http_headers_get(result->error_response_headers, aws_byte_cursor_from_c_str("x-amz-request-id"), &v) ==
            AWS_OP_SUCCESS)
            request_id.assign(reinterpret_cast<const char *>(v.ptr), v.len);
        if (!printable_ascii(request_id)) request_id.clear();
        if (aws_http_headers_get(result->error_response_headers, aws_byte_cursor_from_c_str("x-amz-bucket-region"),
                                 &v) == AWS_OP_SUCCESS)
            region.assign(reinterpret_cast<const char *>(v.ptr), std::min<size_t>(v.len, 64));
    }
    if (result->error_response_operation_name)
        op.assign(reinterpret_cast<const char *>(aws_string_bytes(result->error_response_operation_name)),
                  result->error_response_operation_name->len);
    aws_s3_meta_request *to_release = nullptr;
    std::shared_ptr<CompletionPipe> notify;
    {
        std::lock_guard<std::mutex> lock(t->mu_);
        t->error_code_ = result->error_code;
        if (result->error_code != 0) {
            t->status_ = result->response_status;
            t->error_body_ = std::move(body);
            t->request_id_ = std::move(request_id);
            t->bucket_region_ = std::move(region);
            t->failed_operation_ = std::move(op);
        } else if (t->status_ == 0) {
            t->status_ = result->response_status;
        }
        to_release = t->mr_;
        t->mr_ = nullptr;
        notify = t->mark_finished_locked();
        t->client_->health().transfer_finished(t, result->error_code == 0);
        t->on_finished_locked();
    }
    t->announce_finished(std::move(notify));
    t->after_finished();
    if (to_release) aws_s3_meta_request_release(to_release);
}

std::shared_ptr<CompletionPipe> Transfer::mark_finished_locked() {
    finished_ = true;
    return std::move(notify_);
}

void Transfer::announce_finished(std::shared_ptr<CompletionPipe> notify) {
    cv_.notify_all();
    AnyFinished &any = any_finished();
    {
        std::lock_guard<std::mutex> lock(any.mu);
        ++any.finished;
    }
    any.cv.notify_all();
    // Last: the loop may let go of the transfer's memory as soon as it knows.
    if (notify) notify->post(notify_token_);
}

void Transfer::take_outcome_locked(Transfer &from) {
    std::lock_guard<std::mutex> lock(from.mu_);
    error_code_ = from.error_code_;
    status_ = from.status_;
    error_body_ = from.error_body_;
    request_id_ = from.request_id_;
    bucket_region_ = from.bucket_region_;
    failed_operation_ = from.failed_operation_;
    headers_ = from.headers_;
    last_error_status_ = from.last_error_status_;
    last_error_request_id_ = from.last_error_request_id_;
    unanswered_ = from.unanswered_;
    skewed_ = from.skewed_;
    own_error_ = from.own_error_;
    own_kind_ = from.own_kind_;
}

void Transfer::notify_when_finished(std::shared_ptr<CompletionPipe> pipe, uint64_t token) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        notify_token_ = token;
        if (!finished_) {
            notify_ = std::move(pipe);
            return;
        }
    }
    pipe->post(token);
}

namespace {

// The last error of a failed attempt, for the retry reports: "SlowDown (HTTP 503)",
// "HTTP 500", "AWS_IO_SOCKET_CONNECTION_REFUSED".
std::string attempt_error(int error_code, int status) {
    std::string http = status > 0 ? "HTTP " + std::to_string(status) : std::string();
    if (error_code == AWS_ERROR_S3_SLOW_DOWN) return "SlowDown" + (http.empty() ? "" : " (" + http + ")");
    if (error_code == AWS_ERROR_S3_INTERNAL_ERROR) return "InternalError" + (http.empty() ? "" : " (" + http + ")");
    if (!http.empty()) return http;
    return crt_error_name(error_code);
}

}  // namespace

void Transfer::s_on_telemetry(aws_s3_meta_request *, aws_s3_request_metrics *metrics, void *ud) {
    auto *t = static_cast<Transfer *>(ud);
    int status = 0;
    int error_code = aws_s3_request_metrics_get_error_code(metrics);
    bool answered = aws_s3_request_metrics_get_response_status_code(metrics, &status) == AWS_OP_SUCCESS && status > 0;
    EndpointHealth &health = t->client_->health();
    if (answered && status < 500) {
        health.attempt_succeeded();  // the server works, whatever it said (a 404 too)
    } else if ((status >= 500 || error_code != 0) && error_code != AWS_ERROR_S3_CANCELED) {
        health.attempt_failed(t, t->ctx_, attempt_error(error_code, status),
                              t->client_->retry_deadline_ns(t->start_ns_));
    }
    const bool skewed = error_code == AWS_ERROR_S3_REQUEST_TIME_TOO_SKEWED;
    // An attempt aws-c-s3 retries (no answer, a 5xx but 501 Not Implemented) may have done its
    // work unseen.
    const bool lost =
        (!answered || (status >= 500 && status != 501)) && error_code != AWS_ERROR_S3_CANCELED && t->commits(metrics);
    {
        std::lock_guard<std::mutex> lock(t->mu_);
        t->attempted_ = true;
        if (skewed) t->skewed_ = true;
        if (lost) t->commit_lost_ = true;
    }
    if (skewed) {
        // aws-c-s3 retries it, but a clock 15 minutes off stays off: fail at the first answer,
        // not after the retry budget (raise_if_failed reports it). Events run outside the meta
        // request's lock, so cancelling here is safe.
        t->cancel_meta_request();
    }
    if (answered) {
        t->client_->mark_reached();
        if (status >= 300) {
            const aws_string *id = nullptr;
            std::string request_id;
            if (aws_s3_request_metrics_get_request_id(metrics, &id) == AWS_OP_SUCCESS && id)
                request_id.assign(reinterpret_cast<const char *>(aws_string_bytes(id)), id->len);
            std::lock_guard<std::mutex> lock(t->mu_);
            t->last_error_status_ = status;
            t->last_error_request_id_ = std::move(request_id);
        }
    }
    t->on_attempt(metrics);
}

void Transfer::s_on_shutdown(void *ud) {
    auto *t = static_cast<Transfer *>(ud);
    // Everything the CRT will ever call on us is done: let go of ourselves. Hold the client
    // until after the Transfer is gone so in-flight accounting stays exact.
    std::shared_ptr<Client> client = t->client_;
    std::shared_ptr<Transfer> self = std::move(t->self_);
    self.reset();
    client->transfer_finished();
}

std::shared_ptr<SimpleRequest> SimpleRequest::start_request(std::shared_ptr<Client> client, ErrorContext ctx,
                                                            const char *method, const std::string &operation,
                                                            const Address &addr, int meta_request_type,
                                                            const void *body, size_t body_len, Headers headers,
                                                            const std::string &copy_source_uri) {
    std::shared_ptr<SimpleRequest> req(new SimpleRequest(std::move(client), std::move(ctx)));
    req->launch(method, operation, addr, meta_request_type, body, body_len, std::move(headers), copy_source_uri);
    return req;
}

std::shared_ptr<SimpleRequest> SimpleRequest::start_with_body(std::shared_ptr<Client> client, ErrorContext ctx,
                                                              const char *method, const std::string &operation,
                                                              const Address &addr, std::string body, Headers headers) {
    std::shared_ptr<SimpleRequest> req(new SimpleRequest(std::move(client), std::move(ctx)));
    req->sent_ = std::move(body);  // the Transfer (and sent_) lives until the CRT's shutdown
    req->launch(method, operation, addr, AWS_S3_META_REQUEST_TYPE_DEFAULT, req->sent_.data(), req->sent_.size(),
                std::move(headers), "");
    return req;
}

void SimpleRequest::launch(const char *method, const std::string &operation, const Address &addr, int meta_request_type,
                           const void *body, size_t body_len, Headers headers, const std::string &copy_source_uri) {
    if (body) headers.emplace_back("Content-Length", std::to_string(body_len));
    aws_s3_meta_request_options o;
    AWS_ZERO_STRUCT(o);
    o.type = static_cast<aws_s3_meta_request_type>(meta_request_type);
    if (o.type == AWS_S3_META_REQUEST_TYPE_DEFAULT)
        o.operation_name = aws_byte_cursor_from_array(operation.data(), operation.size());
    if (body) o.request_body = aws_byte_cursor_from_array(body, body_len);
    if (!copy_source_uri.empty())
        o.copy_source_uri = aws_byte_cursor_from_array(copy_source_uri.data(), copy_source_uri.size());
    start(o, method, addr, headers);
}

int SimpleRequest::on_body(const aws_byte_cursor &body, uint64_t, void *) {
    std::lock_guard<std::mutex> lock(mu_);
    body_.append(reinterpret_cast<const char *>(body.ptr), body.len);
    return 0;
}

std::string SimpleRequest::body() {
    std::lock_guard<std::mutex> lock(mu_);
    return body_;
}

}  // namespace s3torch
