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
    std::shared_ptr<GetInto> t(new GetInto(std::move(client), ctx));
    t->whole_ = !range;
    t->launch(range, dest, range ? static_cast<size_t>(range->length) : capacity, if_match);
    return t;
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
