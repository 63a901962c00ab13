#include "s3torch/objects.h"

#include "s3torch/checksum.h"
#include "s3torch/client.h"
#include "s3torch/request.h"
#include "s3torch/request_headers.h"
#include "s3torch/xml.h"

#include <aws/s3/s3_client.h>

#include <cstdint>
#include <cstring>
#include <unordered_map>

namespace s3torch {

std::shared_ptr<SimpleRequest> start_head(std::shared_ptr<Client> client, const std::string &bucket,
                                          const std::string &key, bool for_read, bool with_checksum) {
    ErrorContext ctx{for_read ? "GetObject" : "HeadObject", bucket, key};
    require_names(ctx);
    Address addr = address_of(client->config(), client->endpoint(), bucket, key);
    Headers headers;
    if (with_checksum) headers.emplace_back("x-amz-checksum-mode", "ENABLED");
    return SimpleRequest::start_request(client, ctx, "HEAD", "HeadObject", addr, AWS_S3_META_REQUEST_TYPE_DEFAULT,
                                        nullptr, 0, headers);
}

ObjectInfo head_result(SimpleRequest &req) {
    req.wait();
    req.raise_if_failed();
    ObjectInfo info;
    info.key = req.context().key;
    std::string cl = req.header("content-length");
    if (!cl.empty() && !parse_byte_count(cl, info.size)) {
        throw S3Error(ErrorKind::Generic,
                      "HeadObject s3://" + req.context().bucket + "/" + req.context().key +
                          ": the server sent Content-Length '" + cl.substr(0, 64) + "', not a byte count",
                      req.context());
    }
    info.etag = req.header("etag");
    info.last_modified = req.header("last-modified");
    info.storage_class = req.header("x-amz-storage-class");
    if (info.storage_class.empty()) info.storage_class = "STANDARD";
    // At most one x-amz-checksum-<algorithm> is stored per object; the first found wins.
    static const char *const kAlgorithms[] = {"CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1"};
    for (const char *name : kAlgorithms) {
        std::string header = "x-amz-checksum-" + std::string(name);  // header() ignores case
        std::string value = req.header(header);
        if (value.empty()) continue;
        info.checksum_algorithm = name;
        info.checksum = value.substr(0, 128);  // a bound on what a server can make us keep
        info.checksum_type = req.header("x-amz-checksum-type").substr(0, 32);
        break;
    }
    return info;
}

ObjectInfo head_object(std::shared_ptr<Client> client, const std::string &bucket, const std::string &key,
                       bool with_checksum) {
    auto req = start_head(std::move(client), bucket, key, false, with_checksum);
    return head_result(*req);
}

std::shared_ptr<SimpleRequest> start_list(std::shared_ptr<Client> client, const std::string &bucket,
                                          const std::string &prefix, const std::string &delimiter, int max_keys,
                                          const std::string &continuation_token, const std::string &start_after) {
    ErrorContext ctx{"ListObjectsV2", bucket, prefix};
    require_names(ctx, false);
    if (max_keys < 1 || max_keys > 1000) throw_invalid("max_keys must be between 1 and 1000", ctx);
    // Query parameters in the canonical (sorted) order SigV4 uses.
    std::string q;
    if (!continuation_token.empty()) q += "continuation-token=" + encode_param(continuation_token) + "&";
    if (!delimiter.empty()) q += "delimiter=" + encode_param(delimiter) + "&";
    q += "list-type=2&max-keys=" + std::to_string(max_keys);
    if (!prefix.empty()) q += "&prefix=" + encode_param(prefix);
    if (!start_after.empty()) q += "&start-after=" + encode_param(start_after);
    Address addr = address_of(client->config(), client->endpoint(), bucket, "", q);
    return SimpleRequest::start_request(client, ctx, "GET", "ListObjectsV2", addr, AWS_S3_META_REQUEST_TYPE_DEFAULT);
}

bool parse_byte_count(const std::string &text, uint64_t &out) {
    if (text.empty() || text.size() > 19) return false;
    uint64_t v = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + static_cast<uint64_t>(c - '0');  // 19 digits cannot overflow 2^64
    }
    if (v > static_cast<uint64_t>(INT64_MAX)) return false;
    out = v;
    return true;
}

std::string parse_object_parts_body(const std::string &body, const ErrorContext &ctx, std::vector<uint64_t> &sizes) {
    const size_t before = sizes.size();
    std::string next, bad;
    bool truncated = false;
    uint64_t number = 0, size = 0;
    bool have_number = false, have_size = false;
    auto end_part = [&] {
        if (!have_number && !have_size) return;
        if (!have_number || !have_size) bad = "a part without its number or size";
        else if (number != sizes.size() + 1) bad = "part " + std::to_string(number) + " out of order";
        else sizes.push_back(size);
        have_number = have_size = false;
    };
    auto ends_with = [](const std::string &path, const char *tail) {
        const size_t n = std::strlen(tail);
        return path.size() >= n && path.compare(path.size() - n, n, tail) == 0;
    };
    bool ok = xml_walk(body, [&](const std::string &path, const std::string &text) {
        if (!bad.empty()) return;
        if (ends_with(path, "/ObjectParts/Part")) {
            end_part();  // the previous part's fields are complete
        } else if (ends_with(path, "/ObjectParts/Part/PartNumber")) {
            have_number = parse_byte_count(text, number);
            if (!have_number) bad = "a part number '" + text.substr(0, 32) + "'";
        } else if (ends_with(path, "/ObjectParts/Part/Size")) {
            have_size = parse_byte_count(text, size);
            if (!have_size) bad = "a part size '" + text.substr(0, 32) + "'";
        } else if (ends_with(path, "/ObjectParts/NextPartNumberMarker")) {
            next = text.substr(0, 32);
        } else if (ends_with(path, "/ObjectParts/IsTruncated")) {
            truncated = text == "true";
        }
        if (sizes.size() > kMaxObjectParts) bad = "more than " + std::to_string(kMaxObjectParts) + " parts";
    });
    if (bad.empty()) end_part();
    const std::string where = "GetObjectAttributes s3://" + ctx.bucket + "/" + ctx.key + ": ";
    if (!ok) throw S3Error(ErrorKind::Generic, where + "the response is not valid UTF-8 XML", ctx);
    if (!bad.empty()) throw S3Error(ErrorKind::Generic, where + "the response lists " + bad, ctx);
    if (truncated && next.empty()) throw S3Error(ErrorKind::Generic, where + "a truncated page without a marker", ctx);
    if (truncated && sizes.size() == before)  // paging on would never end
        throw S3Error(ErrorKind::Generic, where + "a truncated page with no parts", ctx);
    return truncated ? next : std::string();
}

std::shared_ptr<SimpleRequest> start_object_parts(std::shared_ptr<Client> client, const std::string &bucket,
                                                  const std::string &key, const std::string &marker, int max_parts) {
    ErrorContext ctx{"GetObjectAttributes", bucket, key};
    require_names(ctx);
    if (max_parts < 1 || max_parts > 1000) throw_invalid("max_parts must be between 1 and 1000", ctx);
    Address addr = address_of(client->config(), client->endpoint(), bucket, key, "attributes=");
    Headers headers{{"x-amz-object-attributes", "ObjectParts"}, {"x-amz-max-parts", std::to_string(max_parts)}};
    if (!marker.empty()) headers.emplace_back("x-amz-part-number-marker", marker);
    return SimpleRequest::start_request(client, ctx, "GET", "GetObjectAttributes", addr,
                                        AWS_S3_META_REQUEST_TYPE_DEFAULT, nullptr, 0, headers);
}

std::string object_parts_result(SimpleRequest &req, std::vector<uint64_t> &sizes) {
    req.wait();
    req.raise_if_failed();
    return parse_object_parts_body(req.body(), req.context(), sizes);
}

ListPage list_result(SimpleRequest &req) {
    req.wait();
    req.raise_if_failed();
    return parse_list_body(req.body(), req.context());
}

ListPage parse_list_body(const std::string &body, const ErrorContext &ctx) {
    ListPage page;
    std::string bad_size;  // the first size that is not a byte count
    bool ok = xml_walk(body, [&](const std::string &path, const std::string &text) {
        // Indices, not pointers: emplace_back may move the objects.
        if (path == "ListBucketResult/Contents") {
            page.objects.emplace_back();
        } else if (page.objects.empty()) {
            if (path == "ListBucketResult/CommonPrefixes/Prefix") page.common_prefixes.push_back(text);
            else if (path == "ListBucketResult/NextContinuationToken") page.next_continuation_token = text;
            else if (path == "ListBucketResult/IsTruncated") page.is_truncated = text == "true";
            return;
        }
        ObjectInfo &cur = page.objects.back();
        if (path == "ListBucketResult/Contents/Key") {
            cur.key = text;
        } else if (path == "ListBucketResult/Contents/Size") {
            if (!parse_byte_count(text, cur.size) && bad_size.empty()) bad_size = text.empty() ? "(empty)" : text;
        } else if (path == "ListBucketResult/Contents/ETag") {
            cur.etag = text;
        } else if (path == "ListBucketResult/Contents/LastModified") {
            cur.last_modified = text;
        } else if (path == "ListBucketResult/Contents/StorageClass") {
            cur.storage_class = text;
        } else if (path == "ListBucketResult/CommonPrefixes/Prefix") {
            page.common_prefixes.push_back(text);
        } else if (path == "ListBucketResult/NextContinuationToken") {
            page.next_continuation_token = text;
        } else if (path == "ListBucketResult/IsTruncated") {
            page.is_truncated = text == "true";
        }
    });
    if (!ok) {
        throw S3Error(ErrorKind::Generic, "ListObjectsV2 s3://" + ctx.bucket + ": the response is not valid UTF-8 XML",
                      ctx);
    }
    if (!bad_size.empty()) {
        throw S3Error(ErrorKind::Generic,
                      "ListObjectsV2 s3://" + ctx.bucket + ": the response gives an object the size '" +
                          bad_size.substr(0, 64) + "', not a byte count",
                      ctx);
    }
    if (!page.is_truncated) page.next_continuation_token.clear();
    else if (page.next_continuation_token.empty())  // the rest of the listing cannot be asked for
        throw S3Error(ErrorKind::Generic,
                      "ListObjectsV2 s3://" + ctx.bucket +
                          ": a truncated page without a NextContinuationToken (does the server support "
                          "ListObjectsV2?); stopping there would silently drop the rest of the listing",
                      ctx);
    return page;
}

std::shared_ptr<SimpleRequest> start_delete(std::shared_ptr<Client> client, const std::string &bucket,
                                            const std::string &key) {
    ErrorContext ctx{"DeleteObject", bucket, key};
    require_names(ctx);
    Address addr = address_of(client->config(), client->endpoint(), bucket, key);
    return SimpleRequest::start_request(client, ctx, "DELETE", "DeleteObject", addr, AWS_S3_META_REQUEST_TYPE_DEFAULT);
}

std::shared_ptr<SimpleRequest> start_delete_objects(std::shared_ptr<Client> client, const std::string &bucket,
                                                    const std::vector<std::string> &keys) {
    ErrorContext ctx{"DeleteObjects", bucket, ""};
    require_names(ctx, false);
    if (keys.empty() || keys.size() > kMaxDeleteKeys)
        throw_invalid(
            "DeleteObjects takes 1 to " + std::to_string(kMaxDeleteKeys) + " keys, not " + std::to_string(keys.size()),
            ctx);
    std::string doc =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>false</Quiet>";
    for (const std::string &key : keys) {
        if (key.empty()) throw_invalid("DeleteObjects: an empty key", ctx);
        doc += "<Object><Key>";
        if (!xml_escape(key, doc))
            throw_invalid("the key " + printable(key) + " holds a character XML cannot carry; delete it alone", ctx);
        doc += "</Key></Object>";
    }
    doc += "</Delete>";
    // S3 wants the body's digest. Content-MD5 is what every S3-compatible store takes (several
    // refuse a DeleteObjects without it); directory buckets (S3 Express, "--x-s3") refuse MD5
    // and take a CRC32 instead, as does S3 where MD5 cannot be computed (a FIPS build).
    Headers headers{{"Content-Type", "application/xml"}};
    const std::string express_suffix = "--x-s3";
    const bool directory_bucket =
        bucket.size() > express_suffix.size() &&
        bucket.compare(bucket.size() - express_suffix.size(), express_suffix.size(), express_suffix) == 0;
    std::optional<std::string> md5;
    if (!directory_bucket) md5 = base64_md5(doc.data(), doc.size());
    if (md5) headers.emplace_back("Content-MD5", *md5);
    else
        headers.emplace_back("x-amz-checksum-crc32",
                             crc_base64(CrcAlgorithm::Crc32, crc(CrcAlgorithm::Crc32, doc.data(), doc.size())));
    Address addr = address_of(client->config(), client->endpoint(), bucket, "", "delete=");
    return SimpleRequest::start_with_body(client, ctx, "POST", "DeleteObjects", addr, std::move(doc),
                                          std::move(headers));
}

std::vector<S3Error> delete_objects_result(SimpleRequest &req, const std::vector<std::string> &keys) {
    req.wait();
    req.raise_if_failed();
    return parse_delete_body(req.body(), keys, req.header("x-amz-request-id"), req.context());
}

std::vector<S3Error> parse_delete_body(const std::string &body, const std::vector<std::string> &keys,
                                       const std::string &request_id, const ErrorContext &ctx) {
    struct Item {
        bool refused = false;
        std::string key, code, message;
    };
    std::vector<Item> items;
    std::string root;
    bool ok = xml_walk(
        body,
        [&](const std::string &path, const std::string &text) {
            if (path == "DeleteResult/Deleted" || path == "DeleteResult/Error") {
                items.emplace_back();
                items.back().refused = path == "DeleteResult/Error";
            } else if (items.empty()) {
                return;
            } else if (path == "DeleteResult/Deleted/Key" || path == "DeleteResult/Error/Key") {
                items.back().key = text;
            } else if (path == "DeleteResult/Error/Code") {
                items.back().code = text;
            } else if (path == "DeleteResult/Error/Message") {
                items.back().message = text;
            }
        },
        &root);
    if (!ok || root != "DeleteResult")
        throw S3Error(ErrorKind::Generic,
                      "DeleteObjects s3://" + ctx.bucket + ": the answer is not a DeleteResult XML document", ctx);
    // Each key asked for: 0 not named yet, 1 deleted, 2 refused (the first word on it counts).
    std::unordered_map<std::string, int> state;
    for (const std::string &k : keys) state.emplace(k, 0);
    std::vector<S3Error> out;
    for (const Item &it : items) {
        auto found = state.find(it.key);
        if (found == state.end() || found->second != 0) continue;  // not asked for, or said already
        // A key the server says is not there is gone, as a delete wants (S3 itself calls that Deleted).
        const bool refused = it.refused && it.code != "NoSuchKey";
        found->second = refused ? 2 : 1;
        if (refused) {
            ErrorContext one{ctx.operation, ctx.bucket, it.key};
            out.push_back(error_for_item(it.code.empty() ? "InternalError" : it.code, it.message, request_id, one));
        }
    }
    for (const std::string &k : keys) {
        auto found = state.find(k);
        if (found->second != 0) continue;
        found->second = 2;  // a key asked for twice is reported once
        ErrorContext one{ctx.operation, ctx.bucket, k};
        S3Error e(ErrorKind::Generic,
                  describe(one) +
                      ": the server's DeleteObjects answer names this key neither deleted nor refused, so it may "
                      "still be there" +
                      (request_id.empty() ? std::string() : " (request id " + request_id + ")"),
                  one);
        e.request_id = request_id;
        out.push_back(std::move(e));
    }
    return out;
}

std::shared_ptr<SimpleRequest> start_copy(std::shared_ptr<Client> client, const std::string &src_bucket,
                                          const std::string &src_key, const std::string &dst_bucket,
                                          const std::string &dst_key) {
    ErrorContext ctx{"CopyObject", dst_bucket, dst_key, src_bucket, src_key};
    require_names(ctx);
    if (src_bucket.empty() || src_key.empty()) throw_invalid("copy source bucket and key must be set", ctx);
    if (!client->config().sse_customer_key.empty())
        throw_invalid(
            "copy_object cannot copy objects encrypted with sse_customer_key (SSE-C): aws-c-s3 sizes a "
            "copy with a HEAD of the source that cannot carry the key; read the object and write it instead",
            ctx);
    Address addr = address_of(client->config(), client->endpoint(), dst_bucket, dst_key);
    // An access point names its object as <ARN>/object/<key>.
    std::string source = encode_path(src_bucket + (is_arn(src_bucket) ? "/object/" : "/") + src_key);
    Address src = address_of(client->config(), client->endpoint(), src_bucket, src_key);
    // x-amz-copy-source names the source; copy_source_uri lets the CRT HEAD it for its size
    // (to choose single CopyObject or multipart UploadPartCopy).
    return SimpleRequest::start_request(client, ctx, "PUT", "CopyObject", addr, AWS_S3_META_REQUEST_TYPE_COPY_OBJECT,
                                        nullptr, 0, {{"x-amz-copy-source", source}}, src.endpoint_uri + src.path);
}

}  // namespace s3torch
