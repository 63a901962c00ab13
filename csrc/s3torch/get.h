// GET of an object, or a byte range of it, straight into caller memory (aws-c-s3
// `recv_buffer`): every part lands at its offset in the destination; no intermediate copy.
#pragma once

#include "s3torch/transfer.h"

#include <aws/common/byte_buf.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace s3torch {

struct ByteRange {
    uint64_t start = 0;
    uint64_t length = 0;  // > 0
};

class GetInto : public Transfer {
  public:
    // Start the GET. `dest` must stay valid and unaliased until done(); its size must hold the
    // range (or the whole object). Throws S3Error InvalidArgument for a bad range or buffer.
    static std::shared_ptr<GetInto> start_get(std::shared_ptr<Client> client, const std::string &bucket,
                                              const std::string &key, std::optional<ByteRange> range,
                                              void *dest, size_t capacity);
    // After a successful finish: bytes written at the start of dest. Throws InvalidArgument if
    // a whole-object GET found the object larger than the buffer.
    size_t bytes_received();
    // Object size from Content-Range/Content-Length (0 if unknown), and ETag.
    uint64_t object_size();
    std::string etag() { return header("etag"); }

  protected:
    using Transfer::Transfer;
    void on_finished_locked() override;

  private:
    std::unique_ptr<aws_byte_buf> recv_;
    size_t received_ = 0;  // mu_
    // A whole-object GET into a buffer smaller than a part is sent as the range
    // [0, capacity); the object must then turn out to fit (checked in bytes_received).
    bool whole_object_as_range_ = false;
    size_t user_capacity_ = 0;
    bool empty_object_ = false;  // mu_
    uint8_t scratch_[1] = {0};  // stands in for a zero-length destination
};

}  // namespace s3torch
