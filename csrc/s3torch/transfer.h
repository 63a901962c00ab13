// Transfer: the lifetime of one aws-c-s3 meta request, seen from the caller.
//
// Threads: the caller starts it and waits on it; CRT event-loop threads run the callbacks
// (headers, body, finish, shutdown). Callbacks never run Python and never block: they store
// results under `mu_` and signal `cv_`.
//
// Lifetime: `start()` keeps the Transfer alive (`self_`) until the meta request's shutdown
// callback, so callbacks never see a dangling pointer even if the caller lets go early.
// The meta request itself is released as soon as it finishes. A caller that owns memory the
// CRT writes into (recv_buffer) must keep it valid until `done()`.
//
// fork(): a Transfer belongs to the process that started it (fork.h). In a forked child it is
// `foreign()`: waiting on it throws, cancelling it does nothing, and destroying it (or what
// holds it) frees nothing of the CRT.
#pragma once

#include "s3torch/errors.h"
#include "s3torch/fork.h"
#include "s3torch/request.h"

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

struct aws_s3_meta_request;
struct aws_s3_meta_request_options;
struct aws_s3_meta_request_result;
struct aws_http_headers;
struct aws_byte_cursor;
struct aws_byte_buf;
struct aws_s3_meta_request_receive_body_extra_info;
struct aws_s3_request_metrics;
struct aws_s3_meta_request_progress;

namespace s3torch {

class Client;
class CompletionPipe;
struct Address;
struct ClientConfig;

class Transfer : public std::enable_shared_from_this<Transfer>, public ProcessOwner {
  public:
    virtual ~Transfer();
    Transfer(const Transfer &) = delete;
    Transfer &operator=(const Transfer &) = delete;

    // Block until the meta request finished, or `timeout_ms` (< 0: forever). True if finished.
    bool wait_for(int64_t timeout_ms);
    void wait() { wait_for(-1); }
    bool done();
    // Ask the CRT to stop; the transfer then finishes with a Cancelled error.
    void cancel();
    // For an owner letting go early: cancel and wait until the CRT is done with the transfer's
    // memory. Nothing to do if it has finished, or in a fork()ed child (it never runs there).
    void cancel_and_wait();
    // After done(): throw the S3Error this transfer failed with, if any.
    void raise_if_failed();
    // Post `token` to `pipe` once this transfer has finished (at once if it has): an event loop
    // then learns of it without a thread waiting (completions.h). One pipe per transfer.
    void notify_when_finished(std::shared_ptr<CompletionPipe> pipe, uint64_t token);
    const ErrorContext &context() const { return ctx_; }

    // Response headers of the (first) successful response, lower-cased names.
    std::string header(const std::string &name);
    // True once an attempt of the request that commits this transfer (commits()) got no answer
    // or a 5xx: the server may have done what it asked without the answer reaching us, and a
    // retry then meets the outcome (a create-only write finds its own object: Upload).
    bool commit_attempt_lost();

  protected:
    Transfer(std::shared_ptr<Client> client, ErrorContext ctx);

    // Build the request (`method` on `addr` with `headers`), fill in callbacks and user data,
    // and create the meta request of `options.type`. Throws S3Error on failure.
    void start(aws_s3_meta_request_options &options, const char *method, const Address &addr,
               const Headers &headers = {});
    // Start the GetObject meta request of ctx_ (`range`, else the whole object), writing into
    // `recv_buffer` if given (else through on_body), with a read window of `read_window` bytes.
    // `if_match` (an ETag, or empty): every request carries it, so an object replaced since
    // fails with ObjectChanged (412) instead of answering from its new version. Without it
    // the CRT still holds the parts of one GET to the ETag of its first (errors.h).
    void start_get_object(const std::optional<ByteRange> &range, aws_byte_buf *recv_buffer, uint64_t read_window,
                          const std::string &if_match = {});
    // A new reference to the meta request (release it), or nullptr once finished.
    aws_s3_meta_request *acquire_meta_request();
    // Cancel the meta request, if still running (whoever asks: the caller, the never-answered
    // watchdog, a skewed clock; each marks its reason first).
    void cancel_meta_request();
    // Cancel the meta request if the endpoint has not answered it within unanswered_ms
    // (retry.h), while the endpoint has never answered this process; a wait for credentials that
    // STS keeps refusing (retrying_credentials.h) does not count.
    void watch_unanswered();
    // Open the read window by `bytes` (saturating), if still running.
    void increment_read_window(uint64_t bytes);
    // Under mu_: finished_ set; the pipe to tell of it (announce_finished), if any.
    std::shared_ptr<CompletionPipe> mark_finished_locked();
    // After mark_finished_locked, mu_ released: wake the waiters, wait_any's and the pipe.
    void announce_finished(std::shared_ptr<CompletionPipe> notify);
    // Under mu_: this transfer ends as `from` did (error, status, headers), `from` finished.
    void take_outcome_locked(Transfer &from);

    // Hooks, on CRT threads. on_body returns an aws error code to cancel, 0 to go on.
    virtual int on_body(const aws_byte_cursor &body, uint64_t range_start, void *ticket);
    // Under mu_, just before waiters are woken.
    virtual void on_finished_locked() {}
    // Last of the finish, not under mu_ (a piece of a split GET tells its whole: get.h).
    virtual void after_finished() {}
    // After cancel() has marked this transfer cancelled and cancelled its meta request, not under
    // mu_ (a split GET cancels its pieces).
    virtual void cancel_parts() {}
    // After each attempt of each request of the meta request (its metrics), not under mu_.
    virtual void on_attempt(aws_s3_request_metrics *) {}
    // Whether the attempt (its metrics) was of the request that commits this transfer's work:
    // every request, but for a multipart upload's (PutStream) its CompleteMultipartUpload.
    virtual bool commits(aws_s3_request_metrics *) { return true; }

    std::shared_ptr<Client> client_;
    ErrorContext ctx_;
    std::mutex mu_;  // guards everything below and subclass state marked "mu_"
    std::condition_variable cv_;
    bool finished_ = false;
    bool cancelled_ = false;
    int error_code_ = 0;
    int status_ = 0;
    std::string error_body_;
    std::string request_id_;
    std::string bucket_region_;  // x-amz-bucket-region of the error response
    std::string failed_operation_;
    std::string headers_;  // "name: value\n" lines, names lower-cased
    // The last attempt that got an error response (status >= 300): the CRT drops its status
    // and request id once retries of a 5xx run out, so the error reports these.
    int last_error_status_ = 0;
    bool unanswered_ = false;   // cancelled by the never-answered watchdog (Transfer::start)
    bool skewed_ = false;       // cancelled at a RequestTimeTooSkewed answer (s_on_telemetry)
    bool attempted_ = false;    // an attempt of this transfer has ended (any outcome)
    bool commit_lost_ = false;  // commit_attempt_lost()
    uint64_t start_ns_ = 0;     // when start() made the meta request (set before it runs)
    std::string last_error_request_id_;
    // A GET into recv_buffer: body bytes of the parts that succeeded, as the CRT reports them
    // (its progress events, all delivered before the finish callback). The CRT reports the
    // range's length as received even when a response was shorter than its part.
    uint64_t delivered_ = 0;
    // Set by a subclass in on_finished_locked (with error_code_): the transfer failed for this
    // reason, which raise_if_failed reports as an S3Error of own_kind_ (InvalidArgument: with
    // the operation and object before it, as throw_invalid words it).
    std::string own_error_;
    ErrorKind own_kind_ = ErrorKind::Generic;
    // The value of response header `name` (lower case), "" if absent; mu_ held.
    std::string header_locked(const std::string &name) const;

  private:
    static int s_on_headers(aws_s3_meta_request *, const aws_http_headers *, int, void *);
    static int s_on_body(aws_s3_meta_request *, const aws_byte_cursor *,
                         const aws_s3_meta_request_receive_body_extra_info, void *);
    static void s_on_finish(aws_s3_meta_request *, const aws_s3_meta_request_result *, void *);
    static void s_on_shutdown(void *);
    static void s_on_telemetry(aws_s3_meta_request *, aws_s3_request_metrics *, void *);
    static void s_on_get_progress(aws_s3_meta_request *, const aws_s3_meta_request_progress *, void *);

    aws_s3_meta_request *mr_ = nullptr;       // mu_; our reference, dropped at finish
    std::shared_ptr<CompletionPipe> notify_;  // mu_; posted notify_token_ at finish
    uint64_t notify_token_ = 0;
    std::shared_ptr<Transfer> self_;  // set by start(), dropped at shutdown
    bool want_body_ = false;
};

// Block until one of `transfers` has finished, or `timeout_ms` (< 0: forever). Returns the index
// of the first finished one in the list (so the oldest, when the list is in start order), or -1
// on timeout. Throws InvalidArgument for an empty list or a transfer of another process.
// Threads: any caller thread; every transfer's finish callback signals one per-process condition
// (a fresh one in a fork()ed child: the parent's may be locked by a thread that is gone), so a
// waiter is woken by any finish and looks again at its own transfers.
int64_t wait_any(const std::vector<Transfer *> &transfers, int64_t timeout_ms);

// The aws_s3_checksum_algorithm uploads carry (ClientConfig::checksums; AWS_SCA_NONE for "off").
int upload_checksum(const ClientConfig &config);

// A request that is not a GET/PUT of an object body (HEAD, list, delete, copy, a PUT of one
// part from memory): collects the response body in memory.
class SimpleRequest : public Transfer {
  public:
    static std::shared_ptr<SimpleRequest> start_request(std::shared_ptr<Client> client, ErrorContext ctx,
                                                        const char *method, const std::string &operation,
                                                        const Address &addr, int meta_request_type,
                                                        const void *body = nullptr, size_t body_len = 0,
                                                        Headers headers = {}, const std::string &copy_source_uri = "");
    // A DEFAULT meta request whose body the request keeps until the CRT is done with it (a
    // DeleteObjects document).
    static std::shared_ptr<SimpleRequest> start_with_body(std::shared_ptr<Client> client, ErrorContext ctx,
                                                          const char *method, const std::string &operation,
                                                          const Address &addr, std::string body, Headers headers);
    std::string body();

  protected:
    using Transfer::Transfer;
    // The meta request of either start: `body` (if any) with its Content-Length.
    void launch(const char *method, const std::string &operation, const Address &addr, int meta_request_type,
                const void *body, size_t body_len, Headers headers, const std::string &copy_source_uri);
    int on_body(const aws_byte_cursor &body, uint64_t range_start, void *ticket) override;
    std::string body_;  // mu_
    std::string sent_;  // start_with_body's body: set before the start, read only by the CRT
};

}  // namespace s3torch
