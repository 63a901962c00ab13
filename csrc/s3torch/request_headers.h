// What a client's configuration adds to its requests, by operation: the User-Agent, server-side
// encryption (SSE-S3, SSE-KMS, DSSE-KMS, SSE-C), requester-pays and the expected bucket owner.
// One table, so that no request path can forget a header its bucket's policy demands.
//
//   header                                        sent with
//   User-Agent (user_agent)                       every request
//   x-amz-request-payer (requester_pays)          every request
//   x-amz-expected-bucket-owner                   every request (and, on CopyObject,
//     (expected_bucket_owner)                       x-amz-source-expected-bucket-owner)
//   x-amz-server-side-encryption[-aws-kms-key-id] PutObject (aws-c-s3 moves it to
//     (sse, sse_kms_key_id)                         CreateMultipartUpload for a multipart one),
//                                                   CopyObject (the copy's encryption)
//   x-amz-server-side-encryption-customer-*       GetObject, HeadObject, GetObjectAttributes,
//     (sse_customer_key)                            PutObject (aws-c-s3 also puts it on each
//                                                   UploadPart)
//
// Listings, deletes and aborts carry no encryption header: S3 takes none there. CopyObject
// refuses a client with sse_customer_key (objects.cpp): aws-c-s3 sizes a copy with a HEAD of the
// source that cannot carry the key.
#pragma once

#include "s3torch/config.h"
#include "s3torch/errors.h"
#include "s3torch/request.h"

#include <optional>
#include <string>

namespace s3torch {

// The headers `config` adds to a request of `operation` ("GetObject", "PutObject", ...).
Headers configured_headers(const ClientConfig &config, const std::string &operation);

// What to add to the error of a request these headers may have made S3 refuse; "" if none:
// - a read or HEAD over SSE-C: without a customer key, a 400 (what S3 answers for an object
//   written with one; a HEAD's has no body); with one, a 403 (a key other than the object's)
//   or a 400 InvalidRequest (S3 refuses a key for an object written without one);
// - a 403 with expected_bucket_owner set: the bucket may belong to another account.
std::string refusal_hint(const S3Error &e, const ClientConfig &config);

// The base64 MD5 of `len` bytes at `data` (a Content-MD5 header's value); none if aws-c-cal
// cannot compute it.
std::optional<std::string> base64_md5(const void *data, size_t len);

// The base64 MD5 of an SSE-C key given as base64; none unless it decodes to exactly 32 bytes.
std::optional<std::string> customer_key_md5(const std::string &key_base64);

}  // namespace s3torch
