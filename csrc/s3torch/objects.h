// Object metadata operations: HEAD, ListObjectsV2, DELETE (one key, or many), COPY.
#pragma once

#include "s3torch/transfer.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace s3torch {

struct ObjectInfo {
    std::string key;
    uint64_t size = 0;
    std::string etag;
    std::string last_modified;  // as the server sent it (HTTP date for HEAD, ISO 8601 in lists)
    std::string storage_class;
    // The object's stored checksum, from a HEAD that asked for it (checksum mode), else "":
    // its algorithm as S3 names it ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"), the
    // value as sent (base64; a composite one ends in "-<parts>"), and x-amz-checksum-type
    // ("FULL_OBJECT", "COMPOSITE", or "" when the server did not say).
    std::string checksum_algorithm;
    std::string checksum;
    std::string checksum_type;
};

struct ListPage {
    std::vector<ObjectInfo> objects;
    std::vector<std::string> common_prefixes;
    std::string next_continuation_token;  // "" when this is the last page
    bool is_truncated = false;
};

ObjectInfo head_object(std::shared_ptr<Client> client, const std::string &bucket, const std::string &key,
                       bool with_checksum = false);

// Start the operations; wait on the returned request, then call the matching result function.
// `for_read`: the HEAD a reader makes for the object's size; its errors are the read's
// (operation GetObject), as a user reading the object sees them. `with_checksum`: ask for the
// stored checksum too (x-amz-checksum-mode: ENABLED; on AWS this needs kms:Decrypt for
// KMS-encrypted objects, as reading them does).
std::shared_ptr<SimpleRequest> start_head(std::shared_ptr<Client> client, const std::string &bucket,
                                          const std::string &key, bool for_read = false, bool with_checksum = false);
ObjectInfo head_result(SimpleRequest &req);

std::shared_ptr<SimpleRequest> start_list(std::shared_ptr<Client> client, const std::string &bucket,
                                          const std::string &prefix, const std::string &delimiter, int max_keys,
                                          const std::string &continuation_token, const std::string &start_after);
ListPage list_result(SimpleRequest &req);

// A ListObjectsV2 response body as a page: S3Error (Generic, naming `ctx`) for a body that is
// not XML or gives an object a size that is not a byte count (negative, not a number, over
// 2^63-1). The one parser of list bodies; fuzzed by csrc/fuzz/fuzz_responses.cpp.
ListPage parse_list_body(const std::string &body, const ErrorContext &ctx);

// The sizes of the parts a multipart upload assembled, in part order (GetObjectAttributes
// ObjectParts; on AWS this needs s3:GetObjectAttributes), a page at a time: up to `max_parts`
// (1..1000) parts after `marker` ("" for the first page). object_parts_result waits, appends
// the page's sizes and returns the next page's marker ("" after the last page; nothing added
// for an object not uploaded in parts). S3Error for a server error, or a body that is not XML
// or lists parts out of order, with a size that is not a byte count, more than kMaxObjectParts
// of them, or a truncated page with none. (The binding loops over the pages, interruptibly.)
constexpr size_t kMaxObjectParts = 10000;  // S3's limit on a multipart upload
std::shared_ptr<SimpleRequest> start_object_parts(std::shared_ptr<Client> client, const std::string &bucket,
                                                  const std::string &key, const std::string &marker,
                                                  int max_parts = 1000);
std::string object_parts_result(SimpleRequest &req, std::vector<uint64_t> &sizes);

// One page of a GetObjectAttributes ObjectParts body: part sizes appended to `sizes` (checked
// to follow on from what it holds), the marker of the next page ("" when this is the last;
// a truncated page must add a part).
// The one parser of these bodies; fuzzed with the list bodies.
std::string parse_object_parts_body(const std::string &body, const ErrorContext &ctx, std::vector<uint64_t> &sizes);

// `text` as a byte count: only ASCII digits, at most 2^63-1 (a size Python and off_t can hold).
bool parse_byte_count(const std::string &text, uint64_t &out);

std::shared_ptr<SimpleRequest> start_delete(std::shared_ptr<Client> client, const std::string &bucket,
                                            const std::string &key);

// DeleteObjects: up to kMaxDeleteKeys keys of one bucket removed by one request (a POST of an
// XML list, with its Content-MD5; a CRC32 instead for a directory bucket, or where MD5 is not
// available). Every key must be one XML can carry (xml_escape); the caller deletes the others
// one by one (InvalidArgument here). Not quiet: the answer names each key, deleted or refused,
// so that a server that answered without deleting is caught. delete_objects_result waits and
// returns the keys not deleted, each as its S3Error (operation DeleteObjects, the key in its
// context): refused with the server's code and message, or not named by the answer at all.
// Throws the request's S3Error when the request itself failed (a server without DeleteObjects
// answers NotImplemented or 405), or S3Error (Generic) for an answer that is not a DeleteResult.
constexpr size_t kMaxDeleteKeys = 1000;  // S3's limit on one DeleteObjects
std::shared_ptr<SimpleRequest> start_delete_objects(std::shared_ptr<Client> client, const std::string &bucket,
                                                    const std::vector<std::string> &keys);
std::vector<S3Error> delete_objects_result(SimpleRequest &req, const std::vector<std::string> &keys);

// A DeleteObjects answer to a request for `keys`: the keys it does not say were deleted (see
// delete_objects_result). The one parser of these bodies; fuzzed with the list bodies.
std::vector<S3Error> parse_delete_body(const std::string &body, const std::vector<std::string> &keys,
                                       const std::string &request_id, const ErrorContext &ctx);

// Server-side copy; multipart (UploadPartCopy) for large objects.
std::shared_ptr<SimpleRequest> start_copy(std::shared_ptr<Client> client, const std::string &src_bucket,
                                          const std::string &src_key, const std::string &dst_bucket,
                                          const std::string &dst_key);

}  // namespace s3torch
