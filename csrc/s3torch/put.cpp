#include "s3torch/put.h"

#include "s3torch/checksum.h"
#include "s3torch/client.h"
#include "s3torch/crt_compat.h"
#include "s3torch/objects.h"
#include "s3torch/request.h"
#include "s3torch/uploads.h"

#include <aws/common/string.h>
#include <aws/http/request_response.h>
#include <aws/io/future.h>
#include <aws/s3/s3_client.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

namespace s3torch {

namespace {

std::string format_gib(double gib) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", gib);
    return buf;
}

Headers put_headers(const PutOptions &opts) {
    Headers h;
    if (!opts.storage_class.empty()) h.emplace_back("x-amz-storage-class", opts.storage_class);
    if (!opts.content_type.empty()) h.emplace_back("Content-Type", opts.content_type);
    if (opts.if_none_match) h.emplace_back("If-None-Match", "*");
    return h;
}

// aws-c-s3 opens about one connection per this many Gbps of throughput target.
constexpr double kGbpsPerConnection = 0.4;
// Parts an Upload lets wait beside those in flight (being filled, or queued behind them).
constexpr uint64_t kExtraWindowParts = 4;
// The window is never smaller than this many parts.
constexpr uint64_t kMinWindowParts = 8;

// One PutObject of `len` bytes sent straight from `data` (valid until it finishes).
std::shared_ptr<Transfer> start_single_put(std::shared_ptr<Client> client, const std::string &bucket,
                                           const std::string &key, const void *data, size_t len,
                                           const PutOptions &opts) {
    ErrorContext ctx{"PutObject", bucket, key};
    Address addr = address_of(client->config(), client->endpoint(), bucket, key);
    static const char kEmpty = 0;
    return SimpleRequest::start_request(client, ctx, "PUT", "PutObject", addr, AWS_S3_META_REQUEST_TYPE_DEFAULT,
                                        len ? data : &kEmpty, len, put_headers(opts));
}

}  // namespace

uint64_t upload_part_size(uint64_t configured, uint64_t size) {
    if (size <= kMaxObjectParts * configured) return configured;
    uint64_t need = (size + kMaxObjectParts - 1) / kMaxObjectParts;
    return std::min(kMaxPartSize, (need + kMiB - 1) / kMiB * kMiB);
}

std::shared_ptr<PutStream> PutStream::start_stream(std::shared_ptr<Client> client, const std::string &bucket,
                                                   const std::string &key, const PutOptions &opts, uint64_t part_size) {
    ErrorContext ctx{"PutObject", bucket, key};
    std::shared_ptr<PutStream> t(new PutStream(client, ctx));
    aws_s3_meta_request_options o;
    AWS_ZERO_STRUCT(o);
    o.type = AWS_S3_META_REQUEST_TYPE_PUT_OBJECT;
    o.send_using_async_writes = true;
    o.part_size = part_size;  // the client's, or larger for an object past its 10,000 parts
    o.on_error_resume_token = s_on_error_token;
    o.progress_callback = s_on_progress;
    aws_s3_checksum_config checksum;  // copied by the meta request when start() makes it
    AWS_ZERO_STRUCT(checksum);
    const ClientConfig &cfg = client->config();
    auto algorithm = static_cast<aws_s3_checksum_algorithm>(upload_checksum(cfg));
    if (algorithm != AWS_SCA_NONE) {
        checksum.location = AWS_SCL_HEADER;  // each part's CRC, which the server verifies
        checksum.checksum_algorithm = algorithm;
        if (cfg.checksum_type == "full_object") {
            checksum.full_object_checksum_callback = s_full_object_checksum;
            checksum.user_data = static_cast<Transfer *>(t.get());
            o.upload_review_callback = s_on_review;
        }
        o.checksum_config = &checksum;
    }
    t->start(o, "PUT", address_of(cfg, client->endpoint(), bucket, key), put_headers(opts));
    return t;
}

int PutStream::s_on_review(aws_s3_meta_request *, const aws_s3_upload_review *review, void *user_data) {
    auto *self = static_cast<PutStream *>(static_cast<Transfer *>(user_data));
    std::string full;
    if (const std::optional<CrcAlgorithm> upload_crc = self->client_->config().upload_crc()) {
        const CrcAlgorithm algorithm = *upload_crc;
        uint64_t crc = 0;
        bool ok = true;
        for (size_t i = 0; i < review->part_count && ok; ++i) {
            const aws_s3_upload_part_review &part = review->part_array[i];
            uint64_t part_crc = 0;
            ok = crc_from_base64(
                algorithm, std::string(reinterpret_cast<const char *>(part.checksum.ptr), part.checksum.len), part_crc);
            crc = crc_combine(algorithm, crc, part_crc, part.size);
        }
        if (ok) full = crc_base64(algorithm, crc);
    }
    std::lock_guard<std::mutex> lock(self->mu_);
    self->full_object_checksum_ = full;
    return AWS_OP_SUCCESS;
}

aws_string *PutStream::s_full_object_checksum(aws_s3_meta_request *, void *user_data) {
    auto *self = static_cast<PutStream *>(static_cast<Transfer *>(user_data));
    std::string full;
    {
        std::lock_guard<std::mutex> lock(self->mu_);
        full = self->full_object_checksum_;
    }
    if (full.empty()) {  // a part without a CRC we can read: fail the upload, never guess
        aws_raise_error(AWS_ERROR_S3_CHECKSUM_CALCULATION_FAILED);
        return nullptr;
    }
    return aws_string_new_from_array(aws_default_allocator(), reinterpret_cast<const uint8_t *>(full.data()),
                                     full.size());
}

void PutStream::s_on_progress(aws_s3_meta_request *, const aws_s3_meta_request_progress *progress, void *user_data) {
    // For an upload, progress is reported as each part's upload succeeds.
    auto *self = static_cast<PutStream *>(static_cast<Transfer *>(user_data));
    {
        std::lock_guard<std::mutex> lock(self->mu_);
        self->uploaded_ += progress->bytes_transferred;
    }
    self->cv_.notify_all();
}

bool PutStream::backlog_wait(uint64_t max_bytes, int64_t timeout_ms) {
    std::unique_lock<std::mutex> lock(mu_);
    auto ok = [&] { return finished_ || handed_ <= uploaded_ + max_bytes; };
    if (timeout_ms < 0) {
        cv_.wait(lock, ok);
        return true;
    }
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ok);
}

void PutStream::s_on_error_token(aws_s3_meta_request *, aws_s3_meta_request_resume_token *token, int, void *user_data) {
    if (!token) return;
    auto *self = static_cast<PutStream *>(static_cast<Transfer *>(user_data));
    aws_byte_cursor id = aws_s3_meta_request_resume_token_upload_id(token);
    std::string encoded = encode_param(std::string(reinterpret_cast<const char *>(id.ptr), id.len));
    std::lock_guard<std::mutex> lock(self->mu_);
    if (self->upload_id_.empty()) self->upload_id_ = encoded;
}

void PutStream::on_attempt(aws_s3_request_metrics *metrics) {
    // Remember the upload id, so an abort can be retried by us if the CRT's single attempt fails.
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (!upload_id_.empty()) return;
    }
    std::string id = crt_compat::upload_id_from_metrics(metrics);
    if (id.empty()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (upload_id_.empty()) upload_id_ = id;
}

bool PutStream::commits(aws_s3_request_metrics *metrics) { return crt_compat::completes_multipart_upload(metrics); }

std::string PutStream::full_object_checksum() {
    std::lock_guard<std::mutex> lock(mu_);
    return full_object_checksum_;
}

std::string PutStream::upload_id() {
    std::lock_guard<std::mutex> lock(mu_);
    return upload_id_;
}

PutStream::~PutStream() {
    if (future_ && !foreign()) aws_future_void_release(future_);  // a fork()ed child leaks it
}

void PutStream::write_begin(const void *data, size_t len, bool eof) {
    aws_s3_meta_request *mr = acquire_meta_request();
    if (!mr) {
        // Finished already: that can only be a failure (we have not sent eof yet).
        wait();
        raise_if_failed();
        throw S3Error(ErrorKind::Generic, "upload already finished", ctx_);
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        handed_ += len;
    }
    future_ = aws_s3_meta_request_write(mr, aws_byte_cursor_from_array(data, len), eof);
    aws_s3_meta_request_release(mr);
}

bool PutStream::write_wait(int64_t timeout_ms) {
    if (!future_) return true;
    uint64_t ns = timeout_ms < 0 ? UINT64_MAX : static_cast<uint64_t>(timeout_ms) * 1000000ull;
    if (!aws_future_void_wait(future_, ns)) return false;
    int err = aws_future_void_get_error(future_);
    aws_future_void_release(future_);
    future_ = nullptr;
    if (err) {
        // The meta request is guaranteed to finish soon; report its error (more precise).
        wait();
        raise_if_failed();
        throw error_from_crt(err, ctx_);
    }
    return true;
}

Upload::Upload(std::shared_ptr<Client> client, std::string bucket, std::string key, PutOptions opts)
    : client_(std::move(client)),
      bucket_(std::move(bucket)),
      key_(std::move(key)),
      opts_(std::move(opts)),
      ctx_{"PutObject", bucket_, key_} {
    require_names(ctx_);
    set_part_size(opts_.size_hint);
}

void Upload::set_part_size(uint64_t size) {
    const ClientConfig &cfg = client_->config();
    part_size_ = upload_part_size(cfg.part_size, size);
    uint64_t connections = static_cast<uint64_t>(std::ceil(cfg.throughput_target_gbps / kGbpsPerConnection));
    window_ = std::max<uint64_t>(connections + kExtraWindowParts, kMinWindowParts) * part_size_;
}

Upload::~Upload() {
    if (!closed_) {
        try {
            abort();
        } catch (...) {
        }
    }
}

bool Upload::write_begin(const void *data, size_t len) {
    if (closed_) throw_invalid("write to a closed upload", ctx_);
    require_owner(ctx_);
    if (phase_ != Phase::Idle) throw_invalid("previous write still in progress", ctx_);
    if (written_ + len > kMaxObjectParts * part_size_) refuse_past_last_part(len);
    written_ += len;
    if (!stream_) {
        if (pending_.size() + len <= client_->config().part_size) {
            pending_.append(static_cast<const char *>(data), len);
            return true;
        }
        // More than one part: switch to a multipart upload, first handing over what we held.
        try {
            stream_ = PutStream::start_stream(client_, bucket_, key_, opts_, part_size_);
        } catch (const S3Error &e) {
            if (part_size_ == client_->config().part_size) throw;
            // AWS_ERROR_S3_PART_SIZE_EXCEEDS_MEMORY_LIMIT: aws-c-s3 takes parts of up to half its
            // memory limit (which a low throughput target lowers to 256 MiB).
            throw with_hint(e, "its parts were sized " + std::to_string(part_size_ >> 20) +
                                   " MiB to hold the size given (size_hint) in S3's 10,000 parts; raise "
                                   "S3ClientConfig.memory_limit_bytes to at least twice that");
        }
        if (!pending_.empty()) {
            stream_->write_begin(pending_.data(), pending_.size(), false);
            stream_->write_wait(-1);
            pending_.clear();
            pending_.shrink_to_fit();
        }
    }
    // Hand the bytes over a part at a time, so the upload window also bounds one huge write
    // (the CRT would otherwise copy all of it into part buffers ahead of the uploads).
    slice_ = static_cast<const uint8_t *>(data);
    slice_left_ = len;
    send_slice();
    phase_ = Phase::Writing;
    return false;
}

void Upload::put_begin(const void *data, size_t len) {
    if (closed_ || written_ != 0 || phase_ != Phase::Idle) throw_invalid("put_begin on an upload already in use", ctx_);
    require_owner(ctx_);
    set_part_size(std::max<uint64_t>(opts_.size_hint, len));
    if (fits_one_put(client_->config(), len)) {
        written_ = len;
        phase_ = Phase::Completing;
        single_data_ = data;
        single_len_ = len;
        single_ = start_single_put(client_, bucket_, key_, data, len, opts_);
        return;
    }
    write_begin(data, len);  // more than a part: the multipart upload, never done at once
    complete_after_write_ = true;
}

bool fits_one_put(const ClientConfig &config, size_t len) { return len <= config.part_size; }

void Upload::send_slice() {
    size_t n = static_cast<size_t>(std::min<uint64_t>(slice_left_, part_size_));
    stream_->write_begin(slice_, n, false);
    slice_ += n;
    slice_left_ -= n;
}

void Upload::complete_begin() {
    if (closed_) throw_invalid("upload already closed", ctx_);
    require_owner(ctx_);
    if (phase_ == Phase::Writing) throw_invalid("previous write still in progress", ctx_);
    phase_ = Phase::Completing;
    if (stream_) {
        stream_->write_begin(nullptr, 0, true);
    } else {
        single_data_ = pending_.data();
        single_len_ = pending_.size();
        single_ = start_single_put(client_, bucket_, key_, pending_.data(), pending_.size(), opts_);
    }
}

bool Upload::wait_step(int64_t timeout_ms) {
    require_owner(ctx_);
    try {
        if (phase_ == Phase::Writing) {
            for (;;) {
                if (!stream_->write_wait(timeout_ms)) return false;
                if (!stream_->backlog_wait(window_, timeout_ms)) return false;
                if (slice_left_ == 0) break;
                send_slice();
            }
            phase_ = Phase::Idle;
            if (!complete_after_write_) return true;
            complete_after_write_ = false;
            complete_begin();
        }
        if (phase_ == Phase::Completing) {
            if (stream_) {
                if (!stream_->write_wait(timeout_ms)) return false;
                if (!stream_->wait_for(timeout_ms)) return false;
                stream_->raise_if_failed();
            } else {
                if (!single_->wait_for(timeout_ms)) return false;
                single_->raise_if_failed();
            }
            phase_ = Phase::Done;
            closed_ = true;
            pending_.clear();
            return true;
        }
        return true;
    } catch (const S3Error &e) {
        fail_cleanup();
        if (e.kind == ErrorKind::ObjectExists && settle_exists(e)) {
            pending_.clear();
            return true;
        }
        throw;
    } catch (...) {
        fail_cleanup();
        throw;
    }
}

void Upload::refuse_past_last_part(size_t len) {
    // The CRT would send part 10,001 and S3 refuse it (InvalidArgument) with everything before it
    // uploaded for nothing; say so now, send nothing more, and abort what was.
    std::string most = format_gib(double(kMaxObjectParts * part_size_) / double(kGiB));
    std::string message = "this write would take the object past " + most + " GiB, the most S3's " +
                          "10,000 parts of " + std::to_string(part_size_ >> 20) + " MiB hold (" +
                          std::to_string(written_) + " bytes written, " + std::to_string(len) +
                          " more), so the upload is aborted and the key left as it was. Give the size ahead " +
                          "(size_hint=) so the parts are sized for it, or raise S3ClientConfig.part_size (at most " +
                          "5 GiB: 64 MiB holds 625 GiB)";
    abort();
    throw_invalid(message, ctx_);
}

void Upload::fail_cleanup() {
    // A failed upload is over. The CRT sent one AbortMultipartUpload; make sure it took.
    closed_ = true;
    phase_ = Phase::Done;
    if (stream_) {
        stream_->wait();
        std::string upload_id = stream_->upload_id();
        if (!upload_id.empty()) {
            try {
                abort_multipart_upload(client_, bucket_, key_, upload_id);
            } catch (const S3Error &) {
                // the original error is the one to report (a completed upload answers NoSuchUpload)
            }
        }
    }
}

bool Upload::settle_exists(const S3Error &e) {
    Transfer &last = stream_ ? static_cast<Transfer &>(*stream_) : *single_;
    if (!last.commit_attempt_lost()) return false;  // every attempt was answered: the key was taken
    // An attempt got no answer and the retry found the key taken: that attempt may have written
    // it. It did if the object there has this write's size and full-object checksum.
    auto unsure = [&](const std::string &why) {
        return with_hint(e,
                         "an earlier attempt of this write got no answer, so the object there may be this "
                         "write's own, and " +
                             why);
    };
    std::string ours;
    if (const std::optional<CrcAlgorithm> algorithm = client_->config().upload_crc()) {
        if (stream_) ours = stream_->full_object_checksum();
        else ours = crc_base64(*algorithm, crc(*algorithm, single_data_, single_len_));
    }
    if (ours.empty())
        throw unsure("this write kept no full-object checksum to tell (checksum_type 'composite', or checksums off)");
    ObjectInfo info;
    try {
        info = head_object(client_, bucket_, key_, true);
    } catch (const S3Error &head_error) {
        throw unsure(std::string("reading its checksum failed: ") + head_error.what());
    }
    if (info.checksum.empty()) throw unsure("the server keeps no checksum of it to tell");
    CrcAlgorithm stored;
    if (!parse_crc_algorithm(info.checksum_algorithm, stored) || stored != *client_->config().upload_crc())
        throw unsure("the server keeps another kind of checksum of it (" + info.checksum_algorithm + ")");
    if (info.size != written_ || info.checksum != ours) return false;  // another writer's
    settled_etag_ = info.etag;
    return true;
}

std::string Upload::etag() {
    if (!settled_etag_.empty()) return settled_etag_;
    if (stream_) return stream_->header("etag");
    if (single_) return single_->header("etag");
    return std::string();
}

void Upload::abort() {
    closed_ = true;
    phase_ = Phase::Done;
    if (foreign()) return;  // a fork()ed child: the parent's CRT owns the transfers; leave them be
    pending_.clear();
    slice_left_ = 0;
    if (stream_) {
        stream_->cancel();  // the CRT aborts the multipart upload, once
        try {
            stream_->write_wait(-1);  // the pending write future completes once cancelled
        } catch (const S3Error &) {
        }
        // The CRT's abort goes through the client's retries, which ride out an outage for
        // retry_timeout_s: wait a bounded time, then remember the upload for a later abort (the
        // meta request finishes on its own; it no longer needs anything of ours).
        bool finished = stream_->wait_for(kAbortWaitMs);
        std::string upload_id = stream_->upload_id();
        if (!upload_id.empty()) {  // else no multipart upload was created
            // Make sure: a 5xx on the CRT's one abort would leave the parts behind. Usually
            // this answers NoSuchUpload (already aborted), which counts as done.
            if (finished) abort_multipart_upload(client_, bucket_, key_, upload_id);
            else client_->remember_abort({bucket_, key_, upload_id});
        }
    }
    if (single_) {
        single_->cancel();
        single_->wait();
    }
}

}  // namespace s3torch
