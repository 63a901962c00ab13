#include "s3torch/get_stream.h"

#include "s3torch/client.h"
#include "s3torch/request.h"

#include <aws/http/request_response.h>
#include <aws/s3/s3_buffer_pool.h>
#include <aws/s3/s3_client.h>

#include <chrono>

namespace s3torch {

Chunk::~Chunk() {
    if (stream_ && stream_->foreign()) return;  // a fork()ed child: the ticket is the parent's CRT's
    if (ticket_) stream_->release_ticket(ticket_);
    if (stream_) stream_->release_bytes(size_);
}

std::shared_ptr<GetStream> GetStream::start_stream(std::shared_ptr<Client> client, const std::string &bucket,
                                                   const std::string &key, std::optional<ByteRange> range,
                                                   uint64_t read_ahead, const std::string &if_match) {
    ErrorContext ctx{"GetObject", bucket, key};
    require_names(ctx);
    if (range && range->length == 0) throw_invalid("range length must be > 0", ctx);
    if (read_ahead == 0) read_ahead = client->config().stream_read_ahead_bytes;
    std::shared_ptr<GetStream> t(new GetStream(client, ctx));
    t->start_get_object(range, nullptr, read_ahead, if_match);
    return t;
}

GetStream::~GetStream() {
    if (foreign()) return;  // a fork()ed child: the tickets belong to the parent's CRT
    // Chunks never handed out still hold tickets.
    for (auto &p : queue_)
        if (p.ticket) release_ticket(p.ticket);
}

void GetStream::release_ticket(aws_s3_buffer_ticket *ticket) {
    aws_s3_buffer_ticket_release(ticket);
    client_->buffer_released();  // after: the pool must outlive the release (Client::buffer_held)
}

int GetStream::on_body(const aws_byte_cursor &body, uint64_t range_start, void *ticket) {
    Pending p{nullptr, std::string(), body.ptr, body.len, range_start};
    if (ticket) {
        p.ticket = aws_s3_buffer_ticket_acquire(static_cast<aws_s3_buffer_ticket *>(ticket));
        client_->buffer_held();  // until release_ticket: by the Chunk, or by our destructor if never handed out
    } else {
        p.owned.assign(reinterpret_cast<const char *>(body.ptr), body.len);
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        buffered_ += body.len;
        queue_.push_back(std::move(p));
        if (!queue_.back().owned.empty())
            queue_.back().data = reinterpret_cast<const uint8_t *>(queue_.back().owned.data());
    }
    cv_.notify_all();
    return 0;
}

std::unique_ptr<Chunk> GetStream::next(int64_t timeout_ms, bool *timed_out) {
    *timed_out = false;
    require_owner(ctx_);
    std::unique_lock<std::mutex> lock(mu_);
    auto ready = [&] { return !queue_.empty() || finished_; };
    if (timeout_ms < 0) {
        cv_.wait(lock, ready);
    } else if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) {
        *timed_out = true;
        return nullptr;
    }
    if (queue_.empty()) {
        lock.unlock();
        raise_if_failed();
        return nullptr;  // finished, everything delivered
    }
    if (finished_ && error_code_ != 0) {
        lock.unlock();
        raise_if_failed();
    }
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    std::unique_ptr<Chunk> c(new Chunk());
    c->stream_ = std::static_pointer_cast<GetStream>(shared_from_this());
    c->ticket_ = p.ticket;
    c->owned_ = std::move(p.owned);
    c->data_ = c->owned_.empty() ? p.data : reinterpret_cast<const uint8_t *>(c->owned_.data());
    c->size_ = p.size;
    c->offset_ = p.offset;
    lock.unlock();
    // The window opens as chunks are handed out, not as they are released: a consumer may
    // hold the chunk it has while it asks for the next (a for loop's variable does), and
    // with a read-ahead smaller than a part, waiting for that release would never end.
    if (c->size_) increment_read_window(c->size_);
    return c;
}

void GetStream::release_bytes(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    buffered_ -= n;
}

uint64_t GetStream::buffered_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return buffered_;
}

}  // namespace s3torch
