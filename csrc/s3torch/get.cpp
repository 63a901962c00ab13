#include "s3torch/get.h"

#include "s3torch/client.h"
#include "s3torch/request.h"

#include <aws/http/request_response.h>
#include <aws/s3/s3_client.h>

#include <cstdlib>

namespace s3torch {

std::shared_ptr<GetInto> GetInto::start_get(std::shared_ptr<Client> client, const std::string &bucket,
                                            const std::string &key, std::optional<ByteRange> range, void *dest,
                                            size_t capacity) {
    ErrorContext ctx{"GetObject", bucket, key};
    require_names(ctx);
    if (range) {
        if (range->length == 0) throw_invalid("range length must be > 0", ctx);
        if (capacity < range->length)
            throw_invalid("destination buffer holds " + std::to_string(capacity) + " bytes but the range is " +
                              std::to_string(range->length) + " bytes",
                          ctx);
    }
    if (capacity == 0 && range) throw_invalid("destination buffer is empty", ctx);
    std::shared_ptr<GetInto> t(new GetInto(client, ctx));
    t->recv_.reset(new aws_byte_buf());
    t->recv_->buffer = static_cast<uint8_t *>(dest);
    t->recv_->capacity = range ? static_cast<size_t>(range->length) : capacity;
    t->recv_->len = 0;
    t->recv_->allocator = nullptr;

    if (!range && capacity < client->config().part_size) {
        // aws-c-s3 would discover the size with a partNumber=1 GET, whose error responses
        // some servers answer oddly; a ranged first GET behaves the same everywhere.
        t->whole_object_as_range_ = true;
        t->user_capacity_ = capacity;
        if (capacity == 0) {
            t->recv_->buffer = t->scratch_;
            capacity = 1;
        }
        range = ByteRange{0, capacity};
        t->recv_->capacity = capacity;
    }
    Headers headers;
    if (range) add_range_header(headers, range->start, range->length);
    aws_s3_meta_request_options o;
    AWS_ZERO_STRUCT(o);
    o.type = AWS_S3_META_REQUEST_TYPE_GET_OBJECT;
    o.recv_buffer = t->recv_.get();
    t->start(o, "GET", address_of(client->config(), client->endpoint(), bucket, key), headers);
    // Not a streaming GET: open the read window fully (saturating) so every part may fly.
    t->increment_read_window(UINT64_MAX);
    return t;
}

void GetInto::on_finished_locked() {
    if (whole_object_as_range_ && error_code_ == AWS_ERROR_S3_INVALID_RESPONSE_STATUS && status_ == 416) {
        // Every non-empty object satisfies a range starting at 0: the object is empty.
        error_code_ = 0;
        status_ = 200;
        recv_->len = 0;
        empty_object_ = true;
    }
    if (error_code_ == 0) received_ = recv_->len;
}

size_t GetInto::bytes_received() {
    size_t got;
    {
        std::lock_guard<std::mutex> lock(mu_);
        got = received_;
    }
    if (whole_object_as_range_ && !empty_object_) {
        uint64_t size = object_size();
        if (size > user_capacity_)
            throw_invalid("destination buffer holds " + std::to_string(user_capacity_) + " bytes but the object is " +
                              std::to_string(size) + " bytes",
                          ctx_);
    }
    return got;
}

uint64_t GetInto::object_size() {
    std::string cr = header("content-range");  // "bytes a-b/size"
    size_t slash = cr.rfind('/');
    if (slash != std::string::npos && slash + 1 < cr.size() && cr[slash + 1] != '*')
        return std::strtoull(cr.c_str() + slash + 1, nullptr, 10);
    std::string cl = header("content-length");
    return cl.empty() ? 0 : std::strtoull(cl.c_str(), nullptr, 10);
}

}  // namespace s3torch
