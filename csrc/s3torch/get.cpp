#include "s3torch/get.h"

#include "s3torch/client.h"
#include "s3torch/request.h"

#include <aws/s3/s3_client.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace s3torch {

namespace {

constexpr int kHttpRangeNotSatisfiable = 416;

// The most pieces a range is split into (1 GiB at the default part size). A longer range is
// aws-c-s3's, whose first part tells the object's size before the others start: a range far
// past the end of a small object (a caller's guess) costs one request, not thousands of 416s.
constexpr uint64_t kMaxPieces = 128;

// Why a whole-object GET failed when the object does not fit the caller's buffer.
std::string too_small(uint64_t capacity, uint64_t object_size) {
    return "destination buffer holds " + std::to_string(capacity) + " bytes but the object is " +
           std::to_string(object_size) + " bytes";
}

}  // namespace

std::shared_ptr<GetInto> GetInto::start_get(std::shared_ptr<Client> client, const std::string &bucket,
                                            const std::string &key, std::optional<ByteRange> range, void *dest,
                                            size_t capacity, const std::string &if_match) {
    if (!range && capacity <= client->config().part_size) {
        // aws-c-s3 would discover the size with a partNumber=1 GET, whose error responses
        // some servers answer oddly; the ranged probe behaves the same everywhere.
        auto t = start_probe(std::move(client), bucket, key, dest, capacity, if_match);
        t->must_fit_ = capacity;
        return t;
    }
    ErrorContext ctx{"GetObject", bucket, key};
    require_names(ctx);
    if (range) {
        if (range->length == 0) throw_invalid("range length must be > 0", ctx);
        if (capacity < range->length)
            throw_invalid("destination buffer holds " + std::to_string(capacity) + " bytes but the range is " +
                              std::to_string(range->length) + " bytes",
                          ctx);
    }
    const uint64_t part = client->config().part_size;
    if (range && range->length > part && range->length <= kMaxPieces * part)
        return start_split(std::move(client), std::move(ctx), *range, static_cast<uint8_t *>(dest), if_match);
    std::shared_ptr<GetInto> t(new GetInto(std::move(client), ctx));
    t->whole_ = !range;
    t->launch(range, dest, range ? static_cast<size_t>(range->length) : capacity, if_match);
    return t;
}

std::shared_ptr<GetInto> GetInto::start_split(std::shared_ptr<Client> client, ErrorContext ctx, ByteRange range,
                                              uint8_t *dest, const std::string &if_match) {
    const uint64_t part = client->config().part_size;
    const uint64_t count = (range.length + part - 1) / part;
    const uint64_t each = (range.length + count - 1) / count;  // <= part
    std::shared_ptr<GetInto> whole(new GetInto(client, ctx));
    // Every piece exists (and is counted) before the first starts: one may finish at once.
    for (uint64_t off = 0; off < range.length; off += each) {
        std::shared_ptr<GetInto> piece(new GetInto(client, ctx));
        piece->split_ = whole;
        piece->piece_index_ = whole->pieces_.size();
        whole->pieces_.push_back(std::move(piece));
        whole->piece_ranges_.push_back(ByteRange{range.start + off, std::min(each, range.length - off)});
    }
    whole->pieces_left_ = whole->pieces_.size();
    size_t started = 0;
    try {
        for (; started < whole->pieces_.size(); ++started) {
            const ByteRange &r = whole->piece_ranges_[started];
            whole->pieces_[started]->launch(r, dest + (r.start - range.start), static_cast<size_t>(r.length), if_match);
        }
    } catch (...) {
        // The pieces started write into the caller's memory: they end before it is given back.
        for (size_t i = 0; i < started; ++i) whole->pieces_[i]->cancel_and_wait();
        throw;
    }
    return whole;
}

void GetInto::after_finished() {
    if (std::shared_ptr<GetInto> whole = split_.lock()) whole->piece_finished(piece_index_);
}

void GetInto::cancel_parts() {
    for (const std::shared_ptr<GetInto> &piece : pieces_) piece->cancel();
}

namespace {

// A finished GET answered 416: its range starts at or past the object's end.
bool past_the_end(int error_code, int status) {
    return error_code == AWS_ERROR_S3_INVALID_RESPONSE_STATUS && status == kHttpRangeNotSatisfiable;
}

}  // namespace

void GetInto::piece_finished(size_t index) {
    GetInto &piece = *pieces_[index];
    bool failed;
    {
        std::lock_guard<std::mutex> lock(piece.mu_);
        // A later piece wholly past the end is no error here (settle_pieces_locked decides).
        failed = piece.error_code_ != 0 && !(index > 0 && past_the_end(piece.error_code_, piece.status_));
    }
    bool first_failure = false, finished = false;
    std::shared_ptr<CompletionPipe> notify;
    {
        std::lock_guard<std::mutex> lock(mu_);
        // A piece cancelled because another failed (or the caller cancelled) is not the cause.
        if (failed && !failed_piece_ && !cancelled_) {
            failed_piece_ = index;
            first_failure = true;
        }
        if (--pieces_left_ == 0) {
            settle_pieces_locked();
            notify = mark_finished_locked();
            finished = true;
        }
    }
    if (first_failure && !finished) cancel_parts();  // the others' bytes are of no use now
    if (finished) announce_finished(std::move(notify));
}

void GetInto::settle_pieces_locked() {
    if (failed_piece_) {
        take_outcome_locked(*pieces_[*failed_piece_]);
        return;
    }
    if (cancelled_) {
        error_code_ = AWS_ERROR_S3_CANCELED;
        return;
    }
    take_outcome_locked(*pieces_[0]);  // its headers: the object's size, ETag (object_size(), etag())
    const uint64_t size = object_size_locked();
    const std::string etag = header_locked("etag");
    size_t total = 0;
    std::string why;
    bool replaced = false;
    for (size_t i = 0; i < pieces_.size() && why.empty(); ++i) {
        GetInto &piece = *pieces_[i];
        const ByteRange &r = piece_ranges_[i];
        std::lock_guard<std::mutex> lock(piece.mu_);
        const bool beyond = past_the_end(piece.error_code_, piece.status_);
        const uint64_t got = beyond ? 0 : piece.received_;
        const uint64_t want = size == 0 ? r.length : size > r.start ? std::min(r.length, size - r.start) : 0;
        if (!beyond && (piece.header_locked("etag") != etag || piece.object_size_locked() != size)) {
            replaced = true;
            why =
                "the object was replaced while it was being read: the pieces of the range answered for "
                "different versions";
        } else if (got != want) {
            why = "the server sent " + std::to_string(got) + " bytes for bytes " + std::to_string(r.start) + "-" +
                  std::to_string(r.start + r.length - 1) + " of an object of " +
                  (size ? std::to_string(size) + " bytes" : std::string("unknown size"));
        }
        total += got;
    }
    if (why.empty()) {
        received_ = total;
        return;
    }
    own_error_ = "GetObject s3://" + ctx_.bucket + "/" + ctx_.key + ": " + why;
    own_kind_ = replaced ? ErrorKind::ObjectChanged : ErrorKind::Generic;
    error_code_ = AWS_ERROR_S3_INVALID_RESPONSE_STATUS;
}

std::shared_ptr<GetInto> GetInto::start_probe(std::shared_ptr<Client> client, const std::string &bucket,
                                              const std::string &key, void *dest, size_t capacity,
                                              const std::string &if_match) {
    ErrorContext ctx{"GetObject", bucket, key};
    require_names(ctx);
    std::shared_ptr<GetInto> t(new GetInto(std::move(client), ctx));
    t->probe_ = true;
    if (capacity == 0) {  // a zero-length destination: ask for one byte, to learn the size
        dest = t->scratch_;
        capacity = 1;
    }
    t->launch(ByteRange{0, capacity}, dest, capacity, if_match);
    return t;
}

void GetInto::launch(const std::optional<ByteRange> &range, void *dest, size_t capacity, const std::string &if_match) {
    recv_.reset(new aws_byte_buf());
    recv_->buffer = static_cast<uint8_t *>(dest);
    recv_->capacity = capacity;
    recv_->len = 0;
    recv_->allocator = nullptr;
    // Not a streaming GET: open the read window fully (saturating) so every part may fly.
    start_get_object(range, recv_.get(), UINT64_MAX, if_match);
}

void GetInto::on_finished_locked() {
    if (probe_ && error_code_ == AWS_ERROR_S3_INVALID_RESPONSE_STATUS && status_ == kHttpRangeNotSatisfiable) {
        // Every non-empty object satisfies a range starting at 0: the object is empty.
        error_code_ = 0;
        status_ = 200;
        recv_->len = 0;
        empty_object_ = true;
    }
    if (error_code_ == 0 && !empty_object_ && delivered_ != recv_->len) {
        // A response shorter (or longer) than its part, which the CRT counted as whole: the
        // destination holds fewer bytes from the server than the length it reports.
        own_error_ = "GetObject s3://" + ctx_.bucket + "/" + ctx_.key + ": the server sent " +
                     std::to_string(delivered_) + " body bytes for a range of " + std::to_string(recv_->len) +
                     " (a Content-Length or Content-Range that does not match the body)";
        error_code_ = AWS_ERROR_S3_INVALID_RESPONSE_STATUS;
        recv_->len = 0;
    }
    if (error_code_ == AWS_ERROR_SHORT_BUFFER && whole_) {
        // The CRT learnt the object's size from the first part and found it larger than the
        // buffer; it says only "Buffer is not large enough". Say it in the probe path's words.
        if (uint64_t size = object_size_locked()) {
            own_error_ = too_small(recv_->capacity, size);
            own_kind_ = ErrorKind::InvalidArgument;
        }
    }
    if (error_code_ == 0) received_ = recv_->len;
}

size_t GetInto::bytes_received() {
    size_t got;
    bool empty;
    {
        std::lock_guard<std::mutex> lock(mu_);
        got = received_;
        empty = empty_object_;
    }
    if (must_fit_ && !empty) {
        uint64_t size = object_size();
        if (size > *must_fit_) throw_invalid(too_small(*must_fit_, size), ctx_);
    }
    return got;
}

uint64_t GetInto::object_size() {
    std::lock_guard<std::mutex> lock(mu_);
    return empty_object_ ? 0 : object_size_locked();
}

uint64_t GetInto::object_size_locked() const {
    std::string cr = header_locked("content-range");  // "bytes a-b/size"
    size_t slash = cr.rfind('/');
    if (slash != std::string::npos && slash + 1 < cr.size() && cr[slash + 1] != '*')
        return std::strtoull(cr.c_str() + slash + 1, nullptr, 10);
    std::string cl = header_locked("content-length");
    return cl.empty() ? 0 : std::strtoull(cl.c_str(), nullptr, 10);
}

WholeObjectGet::WholeObjectGet(std::shared_ptr<Client> client, const std::string &bucket, const std::string &key,
                               const std::string &if_match)
    : client_(std::move(client)), bucket_(bucket), key_(key), if_match_(if_match), scratch_(nullptr, &std::free) {
    const uint64_t first = client_->config().part_size;
    scratch_.reset(static_cast<uint8_t *>(std::malloc(first)));
    if (!scratch_) throw std::bad_alloc();
    probe_ = GetInto::start_probe(client_, bucket_, key_, scratch_.get(), first, if_match_);
}

WholeObjectGet::~WholeObjectGet() {
    // The caller's memory (rest_) and our scratch (probe_) must outlive the CRT's writes.
    if (rest_) rest_->cancel_and_wait();
    if (probe_) probe_->cancel_and_wait();
}

uint64_t WholeObjectGet::size() {
    probe_->raise_if_failed();
    return probe_->object_size();
}

size_t WholeObjectGet::first_size() { return probe_->bytes_received(); }

Transfer &WholeObjectGet::start_rest(void *dest) {
    size_t got = first_size();
    uint64_t total = size();
    if (if_match_.empty()) if_match_ = probe_->etag();
    std::memcpy(dest, scratch_.get(), got);
    scratch_.reset();
    probe_.reset();
    rest_len_ = total - got;
    rest_ = GetInto::start_get(client_, bucket_, key_, ByteRange{got, rest_len_}, static_cast<uint8_t *>(dest) + got,
                               rest_len_, if_match_);
    return *rest_;
}

void WholeObjectGet::finish() {
    rest_->raise_if_failed();
    if (rest_->bytes_received() != rest_len_)
        throw S3Error(ErrorKind::Generic,
                      "GetObject s3://" + bucket_ + "/" + key_ + ": the object changed size while being read",
                      rest_->context());
}

}  // namespace s3torch
