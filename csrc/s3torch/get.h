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
#include <vector>

namespace s3torch {

class GetInto : public Transfer {
  public:
    // Start the GET. `dest` must stay valid and unaliased until done(); its size must hold the
    // range (or the whole object). Throws S3Error InvalidArgument for a bad range or buffer.
    // `if_match` (an ETag, or empty): fail with ObjectChanged unless the object is still that
    // version (Transfer::start_get_object). A range of more than a part goes as pieces
    // (start_split).
    static std::shared_ptr<GetInto> start_get(std::shared_ptr<Client> client, const std::string &bucket,
                                              const std::string &key, std::optional<ByteRange> range, void *dest,
                                              size_t capacity, const std::string &if_match = {});
    // The first `capacity` (> 0) bytes of the whole object, as one ranged GET: the probe of the
    // whole-object strategy (WholeObjectGet, and start_get of a buffer of at most a part).
    // Every non-empty object satisfies "bytes=0-", so a 416 answer means the object is empty:
    // the probe then succeeds with 0 bytes and object_size() 0. A larger object is no error
    // here; object_size() says how large.
    static std::shared_ptr<GetInto> start_probe(std::shared_ptr<Client> client, const std::string &bucket,
                                                const std::string &key, void *dest, size_t capacity,
                                                const std::string &if_match = {});
    // After a successful finish: bytes written at the start of dest. Throws InvalidArgument if
    // a whole-object GET found the object larger than the buffer.
    size_t bytes_received();
    // Object size from Content-Range/Content-Length (0 if unknown), and ETag.
    uint64_t object_size();
    std::string etag() { return header("etag"); }

  protected:
    using Transfer::Transfer;
    void on_finished_locked() override;
    void after_finished() override;
    void cancel_parts() override;

  private:
    // A range of more than a part (up to kMaxPieces parts), as pieces of at most a part each (as
    // many as the CRT's parts, of even sizes), every one a GET of its own started at once: the
    // CRT would GET the first part alone, to learn the object's size, before the others.
    // Pieces of one version: each carries `if_match`, and without it their ETags must agree
    // (else ObjectChanged). A range past the object's end ends where the object does, as one
    // GET's does.
    static std::shared_ptr<GetInto> start_split(std::shared_ptr<Client> client, ErrorContext ctx, ByteRange range,
                                                uint8_t *dest, const std::string &if_match);
    // A piece has finished (from its after_finished; no lock of the piece's held).
    void piece_finished(size_t index);
    // Under mu_, every piece finished: this GET's outcome from theirs.
    void settle_pieces_locked();
    // A split GET's pieces and their ranges (fixed before the first starts).
    std::vector<std::shared_ptr<GetInto>> pieces_;
    std::vector<ByteRange> piece_ranges_;
    size_t pieces_left_ = 0;              // mu_
    std::optional<size_t> failed_piece_;  // mu_: the first piece that failed (not cancelled by us)
    std::weak_ptr<GetInto> split_;        // a piece's split GET
    size_t piece_index_ = 0;              // and its place there

    // Start the GET of `range` (else the whole object) into `capacity` bytes at `dest`.
    void launch(const std::optional<ByteRange> &range, void *dest, size_t capacity, const std::string &if_match);
    std::unique_ptr<aws_byte_buf> recv_;
    size_t received_ = 0;  // mu_
    bool probe_ = false;   // a start_probe() GET: 416 means an empty object
    // start_get() of a whole object as a probe: the object must fit the caller's buffer of
    // this many bytes (checked in bytes_received).
    std::optional<size_t> must_fit_;
    bool empty_object_ = false;  // mu_
    bool whole_ = false;         // a whole-object GET (no range) into the caller's buffer
    uint8_t scratch_[1] = {0};   // stands in for a zero-length destination
    // The object's size from the response headers (0 if unknown): Content-Range, else
    // Content-Length; mu_ held.
    uint64_t object_size_locked() const;
};

// The whole object without knowing its size and without a HEAD: the one whole-object strategy
// of the core. A probe of the first part into scratch memory tells the size (small objects, the
// common case for datasets, are done in that one request); a larger object gets memory of its
// full size from the caller, the first part is copied there and the rest is fetched straight
// into it. The caller waits on probe() and rest() (so it can release its own locks meanwhile).
// Keep the memory given to start_rest() valid until this object is destroyed.
//
// Probe and rest are two GETs: the rest carries the probe's ETag (If-Match), so an object
// replaced between them fails the rest with ObjectChanged instead of completing the probe's
// bytes from another version. With no `if_match` of the caller's, nothing of the object has
// been used yet and the caller may start over (the bindings' get_whole does, a few times).
class WholeObjectGet {
  public:
    // Starts the probe; `if_match` (an ETag, or empty) holds probe and rest to that version.
    WholeObjectGet(std::shared_ptr<Client> client, const std::string &bucket, const std::string &key,
                   const std::string &if_match = {});
    ~WholeObjectGet();
    WholeObjectGet(const WholeObjectGet &) = delete;
    WholeObjectGet &operator=(const WholeObjectGet &) = delete;

    Transfer &probe() { return *probe_; }
    // After the probe finished: the object's size (0 for an empty object). Throws its error.
    uint64_t size();
    // The bytes the probe got: all of the object when size() <= first_size().
    const uint8_t *first() const { return scratch_.get(); }
    size_t first_size();
    // For an object larger than the probe: `dest` holds size() bytes. Copies the first part
    // there and starts the GET of the rest; wait on the returned transfer, then finish().
    Transfer &start_rest(void *dest);
    // After the rest finished: throws its error, or if the object changed size meanwhile.
    void finish();

  private:
    std::shared_ptr<Client> client_;
    std::string bucket_, key_;
    std::string if_match_;  // the caller's, else the probe's ETag once it answered
    std::unique_ptr<uint8_t, void (*)(void *)> scratch_;
    std::shared_ptr<GetInto> probe_, rest_;
    uint64_t rest_len_ = 0;
};

}  // namespace s3torch
