// PUT: a streaming upload fed buffer by buffer, or a whole object from caller memory (Upload).
#pragma once

#include "s3torch/transfer.h"

#include <cstdint>
#include <memory>
#include <string>

struct aws_future_void;
struct aws_s3_meta_request;
struct aws_s3_meta_request_progress;
struct aws_s3_meta_request_resume_token;
struct aws_s3_request_metrics;
struct aws_s3_upload_review;
struct aws_string;

namespace s3torch {

struct PutOptions {
    std::string storage_class;  // x-amz-storage-class, "" for the bucket default
    std::string content_type;
    // Create only: the write carries If-None-Match: * (a multipart upload on its
    // CompleteMultipartUpload, as S3 takes it), so it fails with ObjectExists, writing nothing,
    // if the key holds an object when it completes. A server that ignores the header overwrites.
    bool if_none_match = false;
    // The object's size, or about it, when the writer knows it ahead (0: not known): a size past
    // what S3's 10,000 parts of the configured part size hold gets larger parts (upload_part_size).
    uint64_t size_hint = 0;
};

// The part size of an upload of `size` bytes (0: not known): `configured`, or, when `size` is
// more than S3's 10,000 parts (kMaxObjectParts) of those hold, the smallest whole MiB that holds
// it (at most kMaxPartSize).
uint64_t upload_part_size(uint64_t configured, uint64_t size);

// The multipart meta request behind an Upload (aws-c-s3 async writes).
class PutStream : public Transfer {
  public:
    static std::shared_ptr<PutStream> start_stream(std::shared_ptr<Client> client, const std::string &bucket,
                                                   const std::string &key, const PutOptions &opts, uint64_t part_size);
    // Hand `len` bytes (which must stay valid until write_wait() returns true) to the CRT.
    void write_begin(const void *data, size_t len, bool eof);
    // Wait up to timeout_ms (< 0: forever) for the last write_begin; true when it is done.
    // Throws the transfer's error if the write failed.
    bool write_wait(int64_t timeout_ms);
    // Wait up to timeout_ms (< 0: forever) until at most `max_bytes` of what was written is
    // not yet uploaded (or the upload has finished). True when that holds.
    bool backlog_wait(uint64_t max_bytes, int64_t timeout_ms);
    // The multipart upload id, URI-encoded as it appears in request queries; "" until a part
    // request or a failure report has shown it.
    std::string upload_id();
    // The whole object's checksum sent with its CompleteMultipartUpload (base64; "" unless
    // checksum_type is "full_object" and the review ran).
    std::string full_object_checksum();
    ~PutStream() override;

  protected:
    using Transfer::Transfer;
    void on_attempt(aws_s3_request_metrics *metrics) override;
    bool commits(aws_s3_request_metrics *metrics) override;

  private:
    static void s_on_error_token(aws_s3_meta_request *, aws_s3_meta_request_resume_token *, int, void *);
    static void s_on_progress(aws_s3_meta_request *, const aws_s3_meta_request_progress *, void *);
    // Full-object checksums (ClientConfig::checksum_type "full_object"): before the
    // CompleteMultipartUpload, the CRT shows us every part's CRC (as sent with the part, which
    // the server verified) and then asks for the whole object's; it is those CRCs combined in
    // part order, so no byte is read twice. Both run on the meta request's event-loop thread,
    // one after the other.
    static int s_on_review(aws_s3_meta_request *, const aws_s3_upload_review *, void *);
    static aws_string *s_full_object_checksum(aws_s3_meta_request *, void *);
    std::string full_object_checksum_;   // mu_: base64, set by s_on_review; "" on failure
    aws_future_void *future_ = nullptr;  // caller thread only
    uint64_t handed_ = 0;                // mu_: bytes given to the CRT
    uint64_t uploaded_ = 0;              // mu_: bytes of parts the server acknowledged
    std::string upload_id_;              // mu_, URI-encoded
};

// Whether a whole object of `len` bytes goes as one PutObject (at most a part), not as a
// multipart upload (Upload::put_begin).
bool fits_one_put(const ClientConfig &config, size_t len);

// A streaming upload. Data is buffered in memory until it exceeds one part; an object that
// never does is sent as a single PutObject on complete(). Otherwise a multipart upload starts
// and parts upload concurrently as they fill. A write returns once its bytes are copied into
// part buffers *and* no more than the upload window of bytes are waiting to be uploaded, so memory
// stays bounded however fast the caller writes, and the CRT's part-buffer pool reuses the same
// few buffers instead of touching fresh memory for every part. abort() (or a failure) aborts
// the multipart upload so no parts stay behind. Methods are for one caller thread at a time.
//
// fork(): an Upload belongs to the process that made it (fork.h); in a fork()ed child writing
// or completing throws, and abort() only marks it closed (the parent owns the upload).
class Upload : public ProcessOwner {
  public:
    Upload(std::shared_ptr<Client> client, std::string bucket, std::string key, PutOptions opts);
    ~Upload();

    // Either buffers the bytes (returns true: done) or starts handing them to the CRT
    // (returns false: call wait_step() until it returns true; `data` must stay valid till then).
    bool write_begin(const void *data, size_t len);
    // Start finishing the upload; then wait_step() until true, then etag().
    void complete_begin();
    // The whole object at once, on a fresh Upload: `len` bytes at `data` (valid until
    // wait_step() returns true), then complete. Up to a part goes as one PutObject sent straight
    // from that memory; more as the multipart upload, a part at a time through the window.
    void put_begin(const void *data, size_t len);
    bool wait_step(int64_t timeout_ms);
    // After put_begin() of at most a part: the one PutObject that sends it, whose finish is the
    // upload's (wait_step() then completes at once); nullptr for a multipart upload.
    Transfer *single_put() const { return single_.get(); }
    std::string etag();
    // Cancel; blocks until the CRT has aborted the multipart upload.
    void abort();

    uint64_t bytes_written() const { return written_; }
    bool closed() const { return closed_; }
    const ErrorContext &context() const { return ctx_; }

  private:
    enum class Phase { Idle, Writing, Completing, Done };
    std::shared_ptr<Client> client_;
    std::string bucket_, key_;
    PutOptions opts_;
    ErrorContext ctx_;
    std::string pending_;  // bytes not yet given to the CRT (single-PUT case, first part)
    std::shared_ptr<PutStream> stream_;
    std::shared_ptr<Transfer> single_;
    Phase phase_ = Phase::Idle;
    bool complete_after_write_ = false;  // put_begin(): complete_begin() once the write is in
    void send_slice();
    // A create-only write that failed ObjectExists after an attempt of its committing request
    // got no answer: true if the object there is this write's own (that attempt did commit:
    // same size and stored checksum); else throws `e`, saying why it could not tell.
    bool settle_exists(const S3Error &e);
    void fail_cleanup();
    // A write that would need part 10,001: abort the upload and throw InvalidArgument.
    [[noreturn]] void refuse_past_last_part(size_t len);
    const void *single_data_ = nullptr;  // the single PutObject's body (valid until it finishes)
    size_t single_len_ = 0;
    std::string settled_etag_;  // settle_exists() found our object: its ETag
    uint64_t written_ = 0;
    // The multipart upload's part size (upload_part_size of the size hint, or of put_begin's
    // length); what it holds in S3's 10,000 parts is the most a write may reach.
    uint64_t part_size_ = 0;
    void set_part_size(uint64_t size);
    // Bytes written but not yet uploaded that a write may leave behind: enough parts to keep
    // every connection the throughput target calls for busy, plus a few being filled.
    uint64_t window_ = 0;
    const uint8_t *slice_ = nullptr;  // the rest of the current write, handed over a part at a time
    uint64_t slice_left_ = 0;
    bool closed_ = false;
};

}  // namespace s3torch
