// GET as a stream of chunks, in order, without copying: each chunk is a view of a CRT part
// buffer kept alive by its buffer ticket until the consumer releases the chunk.
//
// Back-pressure: the meta request's read window starts at `read_ahead` bytes and grows only
// as the consumer takes chunks, so at most about read_ahead bytes (plus parts already in
// flight when the window closed) wait ahead of a slow consumer however large the object is,
// besides the chunks the consumer itself still holds.
#pragma once

#include "s3torch/get.h"
#include "s3torch/transfer.h"

#include <deque>
#include <memory>
#include <optional>
#include <string>

struct aws_s3_buffer_ticket;

namespace s3torch {

class GetStream;

// One delivered piece of the object. Releases its ticket (and its count in buffered bytes)
// when destroyed.
class Chunk {
  public:
    ~Chunk();
    Chunk(const Chunk &) = delete;
    Chunk &operator=(const Chunk &) = delete;
    const uint8_t *data() const { return data_; }
    size_t size() const { return size_; }
    uint64_t offset() const { return offset_; }  // object offset of data()[0]

  private:
    friend class GetStream;
    Chunk() = default;
    std::shared_ptr<GetStream> stream_;
    aws_s3_buffer_ticket *ticket_ = nullptr;
    std::string owned_;  // used when the CRT gave no ticket: the bytes were copied here
    const uint8_t *data_ = nullptr;
    size_t size_ = 0;
    uint64_t offset_ = 0;
};

class GetStream : public Transfer {
  public:
    // `if_match` (an ETag, or empty): fail with ObjectChanged unless the object is that version.
    static std::shared_ptr<GetStream> start_stream(std::shared_ptr<Client> client, const std::string &bucket,
                                                   const std::string &key, std::optional<ByteRange> range,
                                                   uint64_t read_ahead, const std::string &if_match = {});
    ~GetStream() override;

    // Next chunk in object order; nullptr at the end. Blocks up to `timeout_ms` (< 0: forever);
    // on timeout returns nullptr with *timed_out = true. Throws the transfer's error.
    std::unique_ptr<Chunk> next(int64_t timeout_ms, bool *timed_out);
    // Bytes delivered by the CRT but not yet released by the consumer.
    uint64_t buffered_bytes();

  protected:
    using Transfer::Transfer;
    int on_body(const aws_byte_cursor &body, uint64_t range_start, void *ticket) override;

  private:
    friend class Chunk;
    void release_bytes(size_t n);
    // Give a part buffer back to the CRT's pool, and its count to the client.
    void release_ticket(aws_s3_buffer_ticket *ticket);
    struct Pending {
        aws_s3_buffer_ticket *ticket;
        std::string owned;
        const uint8_t *data;
        size_t size;
        uint64_t offset;
    };
    std::deque<Pending> queue_;  // mu_
    uint64_t buffered_ = 0;      // mu_: queued + handed out, not yet released
};

}  // namespace s3torch
