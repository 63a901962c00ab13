// Multipart-upload housekeeping: aborting an upload so no parts stay behind (and remembering
// the ones an outage kept us from aborting), listing the incomplete uploads under a prefix.
#pragma once

#include "s3torch/client.h"
#include "s3torch/transfer.h"

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace s3torch {

// How long one abort may keep trying before its upload is remembered for later instead.
constexpr int64_t kAbortWaitMs = 15000;

// AbortMultipartUpload of `upload_id` (URI-encoded, as the CRT's requests carry it). The CRT
// sends one abort after a failure or cancel and never retries it; this one is retried through
// 5xx and connection failures for up to `wait_ms`. True when the upload is gone (aborted, or
// NoSuchUpload). False when the server could not be reached in time: the upload is then
// remembered on `client` (Client::remember_abort) for retry_pending_aborts(). Throws on other
// errors (e.g. access denied). `check`: as abort_uploads's (one upload of it).
bool abort_multipart_upload(std::shared_ptr<Client> client, const std::string &bucket, const std::string &key,
                            const std::string &upload_id, int64_t wait_ms = kAbortWaitMs,
                            const std::function<void()> &check = {});

// What became of one upload of abort_uploads.
struct AbortOutcome {
    bool gone = false;           // aborted, or already gone (NoSuchUpload)
    std::exception_ptr refused;  // refused for good (e.g. access denied)
};  // neither: not reached in time, and remembered on the client (Client::remember_abort)

// Abort every upload of `uploads` (upload ids URI-encoded), up to 64 in flight at once, each
// retried through 5xx and connection failures. The wait ends when no upload has settled for
// `wait_ms` (an outage): N uploads an outage holds take `wait_ms`, not N times it, while a
// server that answers keeps the aborts going. Those not settled then are cancelled and
// remembered. `check`, when given, is called at least every 100 ms (the bindings raise a
// KeyboardInterrupt there); if it throws, every upload not settled is remembered and the
// exception propagates.
std::vector<AbortOutcome> abort_uploads(const std::shared_ptr<Client> &client,
                                        const std::vector<Client::PendingAbort> &uploads, int64_t wait_ms,
                                        const std::function<void()> &check = {});

// Try again every upload `client` remembered, all at once (abort_uploads), until none has
// settled for `wait_ms`; returns those still pending (they stay remembered).
std::vector<Client::PendingAbort> retry_pending_aborts(std::shared_ptr<Client> client, int64_t wait_ms,
                                                       const std::function<void()> &check = {});

struct MultipartUploadInfo {
    std::string key;
    std::string upload_id;  // as the server sent it (not encoded)
    std::string initiated;  // ISO 8601, as the server sent it
};

// Every incomplete multipart upload under `prefix` (ListMultipartUploads, all pages). `wait`
// waits for each page's request (the bindings': with the GIL released a slice at a time, so a
// KeyboardInterrupt cancels the page in flight and ends the listing).
std::vector<MultipartUploadInfo> list_multipart_uploads(
    std::shared_ptr<Client> client, const std::string &bucket, const std::string &prefix,
    const std::function<void(Transfer &)> &wait = [](Transfer &t) { t.wait(); });

}  // namespace s3torch
