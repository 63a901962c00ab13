#include "s3torch/uploads.h"

#include "s3torch/errors.h"
#include "s3torch/request.h"
#include "s3torch/transfer.h"
#include "s3torch/xml.h"

#include <aws/s3/s3_client.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <exception>
#include <set>

namespace s3torch {

namespace {

// Attempts of our own AbortMultipartUpload, each after the client's retries ran out.
constexpr int kAbortAttempts = 4;
// Aborts in flight at once (more wait their turn: the CRT would only queue them).
constexpr size_t kAbortWindow = 64;
// How often abort_uploads calls its `check` while it waits.
constexpr int64_t kAbortCheckMs = 100;

int64_t ms_left(std::chrono::steady_clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return left.count() > 0 ? left.count() : 0;
}

std::shared_ptr<SimpleRequest> start_abort(const std::shared_ptr<Client> &client, const Client::PendingAbort &p) {
    ErrorContext ctx{"AbortMultipartUpload", p.bucket, p.key};
    Address addr = address_of(client->config(), client->endpoint(), p.bucket, p.key, "uploadId=" + p.upload_id);
    return SimpleRequest::start_request(client, ctx, "DELETE", "AbortMultipartUpload", addr,
                                        AWS_S3_META_REQUEST_TYPE_DEFAULT);
}

// An abort that failed this way may succeed later: the server was not reached, or failed.
bool unreachable(const S3Error &e) {
    return e.kind == ErrorKind::Connection || e.kind == ErrorKind::Timeout || e.http_status >= 500 ||
           (e.http_status == 0 && e.kind == ErrorKind::Generic);
}

}  // namespace

std::vector<AbortOutcome> abort_uploads(const std::shared_ptr<Client> &client,
                                        const std::vector<Client::PendingAbort> &uploads, int64_t wait_ms,
                                        const std::function<void()> &check) {
    struct InFlight {
        size_t index;
        int attempt;
        std::shared_ptr<SimpleRequest> req;
    };
    using clock = std::chrono::steady_clock;
    auto deadline = clock::now() + std::chrono::milliseconds(wait_ms);  // moved on by every settled upload
    std::vector<AbortOutcome> out(uploads.size());
    std::deque<std::pair<size_t, int>> waiting;  // (index, attempt), launched in order
    for (size_t i = 0; i < uploads.size(); ++i) waiting.emplace_back(i, 1);
    std::vector<InFlight> flying;
    // Those not settled when the wait ends (no progress for wait_ms, or `check` threw): the
    // ones in flight cancelled, all of them remembered for a later retry.
    auto give_up = [&] {
        // All cancelled before any is waited for: a request still queued for a connection
        // finishes only once the cancelled ones in flight have given theirs back.
        for (InFlight &f : flying) f.req->cancel();
        for (InFlight &f : flying) {
            f.req->wait();
            client->remember_abort(uploads[f.index]);
        }
        for (auto &w : waiting) client->remember_abort(uploads[w.first]);
        flying.clear();
        waiting.clear();
    };
    while (!waiting.empty() || !flying.empty()) {
        // A request that cannot even start settles its upload as a failed attempt would, so
        // that one such upload never costs the others their abort (or their place among the
        // remembered).
        while (flying.size() < kAbortWindow && !waiting.empty()) {
            auto [i, attempt] = waiting.front();
            waiting.pop_front();
            try {
                flying.push_back({i, attempt, start_abort(client, uploads[i])});
            } catch (const S3Error &e) {
                if (unreachable(e)) client->remember_abort(uploads[i]);
                else out[i].refused = std::current_exception();
            }
        }
        if (flying.empty()) continue;
        std::vector<Transfer *> requests;
        for (InFlight &f : flying) requests.push_back(f.req.get());
        int64_t left = ms_left(deadline);
        int64_t found = wait_any(requests, check ? std::min<int64_t>(left, kAbortCheckMs) : left);
        if (found >= 0) {
            InFlight f = std::move(flying[static_cast<size_t>(found)]);
            flying.erase(flying.begin() + found);
            bool settled = true;
            try {
                f.req->raise_if_failed();
                out[f.index].gone = true;
            } catch (const S3Error &e) {
                if (e.kind == ErrorKind::NotFound) {
                    out[f.index].gone = true;  // already gone
                } else if (!unreachable(e)) {
                    out[f.index].refused = std::current_exception();
                } else if (f.attempt < kAbortAttempts && ms_left(deadline) > 0) {
                    waiting.emplace_front(f.index, f.attempt + 1);
                    settled = false;
                } else {
                    client->remember_abort(uploads[f.index]);
                }
            }
            if (settled) deadline = clock::now() + std::chrono::milliseconds(wait_ms);
        }
        if (check) {
            try {
                check();
            } catch (...) {
                give_up();
                throw;
            }
        }
        if (found < 0 && ms_left(deadline) == 0) {
            give_up();  // nothing settled for wait_ms: the server is not answering
            break;
        }
    }
    return out;
}

bool abort_multipart_upload(std::shared_ptr<Client> client, const std::string &bucket, const std::string &key,
                            const std::string &upload_id, int64_t wait_ms, const std::function<void()> &check) {
    AbortOutcome outcome = abort_uploads(client, {{bucket, key, upload_id}}, wait_ms, check)[0];
    if (outcome.refused) std::rethrow_exception(outcome.refused);
    return outcome.gone;
}

std::vector<Client::PendingAbort> retry_pending_aborts(std::shared_ptr<Client> client, int64_t wait_ms,
                                                       const std::function<void()> &check) {
    // An upload refused for good (e.g. access denied) is dropped: nothing more this process can do.
    abort_uploads(client, client->take_pending_aborts(), wait_ms, check);  // those not reached are remembered again
    return client->pending_aborts();
}

std::vector<MultipartUploadInfo> list_multipart_uploads(std::shared_ptr<Client> client, const std::string &bucket,
                                                        const std::string &prefix,
                                                        const std::function<void(Transfer &)> &wait) {
    ErrorContext ctx{"ListMultipartUploads", bucket, prefix};
    require_names(ctx, false);
    std::vector<MultipartUploadInfo> out;
    std::string key_marker, id_marker;
    std::set<std::string> followed;  // "key\nid" of every marker pair asked for
    for (;;) {
        // Query parameters in the canonical (sorted) order SigV4 uses.
        std::string q;
        if (!key_marker.empty()) q += "key-marker=" + encode_param(key_marker) + "&";
        if (!prefix.empty()) q += "prefix=" + encode_param(prefix) + "&";
        if (!id_marker.empty()) q += "upload-id-marker=" + encode_param(id_marker) + "&";
        q += "uploads=";
        Address addr = address_of(client->config(), client->endpoint(), bucket, "", q);
        auto req = SimpleRequest::start_request(client, ctx, "GET", "ListMultipartUploads", addr,
                                                AWS_S3_META_REQUEST_TYPE_DEFAULT);
        wait(*req);
        req->raise_if_failed();
        std::string body = req->body();
        bool truncated = false;
        std::string next_key, next_id;
        MultipartUploadInfo *cur = nullptr;
        bool ok = xml_walk(body, [&](const std::string &path, const std::string &text) {
            if (path == "ListMultipartUploadsResult/Upload") {
                out.emplace_back();
                cur = &out.back();
            } else if (cur && path == "ListMultipartUploadsResult/Upload/Key") {
                cur->key = text;
            } else if (cur && path == "ListMultipartUploadsResult/Upload/UploadId") {
                cur->upload_id = text;
            } else if (cur && path == "ListMultipartUploadsResult/Upload/Initiated") {
                cur->initiated = text;
            } else if (path == "ListMultipartUploadsResult/IsTruncated") {
                truncated = text == "true";
            } else if (path == "ListMultipartUploadsResult/NextKeyMarker") {
                next_key = text;
            } else if (path == "ListMultipartUploadsResult/NextUploadIdMarker") {
                next_id = text;
            }
        });
        if (!ok)
            throw S3Error(ErrorKind::Generic,
                          "ListMultipartUploads s3://" + bucket + ": the response is not valid UTF-8 XML", ctx);
        if (!truncated) break;
        // Paging must move on: a truncated page names where the next starts, at a place not
        // asked for before. A server that answers otherwise (no markers, the same ones, or
        // markers taking turns) would list forever or stop short without saying so. (Not the
        // markers' order: S3 lists uploads by key, other servers in their own order.)
        std::string why;
        if (next_key.empty() && next_id.empty()) why = "is truncated but names no NextKeyMarker to go on from";
        else if (!followed.insert(next_key + '\n' + next_id).second)
            why = "names markers ('" + printable(next_key.substr(0, 200)) + "', '" + printable(next_id.substr(0, 200)) +
                  "') it gave before";
        if (!why.empty())
            throw S3Error(ErrorKind::Generic,
                          "ListMultipartUploads s3://" + bucket + ": page " + std::to_string(followed.size() + 1) +
                              " " + why + ": its paging does not advance",
                          ctx);
        key_marker = next_key;
        id_marker = next_id;
    }
    return out;
}

}  // namespace s3torch
