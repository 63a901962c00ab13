#include "s3torch/objects.h"

#include "s3torch/client.h"
#include "s3torch/request.h"
#include "s3torch/xml.h"

#include <aws/s3/s3_client.h>

#include <cstdlib>

namespace s3torch {

std::shared_ptr<SimpleRequest> start_head(std::shared_ptr<Client> client, const std::string &bucket,
                                          const std::string &key, bool for_read) {
    ErrorContext ctx{for_read ? "GetObject" : "HeadObject", bucket, key};
    require_names(ctx);
    Address addr = address_of(client->config(), client->endpoint(), bucket, key);
    return SimpleRequest::start_request(client, ctx, "HEAD", "HeadObject", addr, AWS_S3_META_REQUEST_TYPE_DEFAULT);
}

ObjectInfo head_result(SimpleRequest &req) {
    req.wait();
    req.raise_if_failed();
    ObjectInfo info;
    info.key = req.context().key;
    std::string cl = req.header("content-length");
    info.size = cl.empty() ? 0 : std::strtoull(cl.c_str(), nullptr, 10);
    info.etag = req.header("etag");
    info.last_modified = req.header("last-modified");
    info.storage_class = req.header("x-amz-storage-class");
    if (info.storage_class.empty()) info.storage_class = "STANDARD";
    return info;
}

ObjectInfo head_object(std::shared_ptr<Client> client, const std::string &bucket, const std::string &key) {
    auto req = start_head(std::move(client), bucket, key);
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

ListPage list_result(SimpleRequest &req) {
    req.wait();
    req.raise_if_failed();
    ListPage page;
    std::string body = req.body();
    ObjectInfo *cur = nullptr;
    bool ok = xml_walk(body, [&](const std::string &path, const std::string &text) {
        if (path == "ListBucketResult/Contents") {
            page.objects.emplace_back();
            cur = &page.objects.back();
        } else if (cur && path == "ListBucketResult/Contents/Key") {
            cur->key = text;
        } else if (cur && path == "ListBucketResult/Contents/Size") {
            cur->size = std::strtoull(text.c_str(), nullptr, 10);
        } else if (cur && path == "ListBucketResult/Contents/ETag") {
            cur->etag = text;
        } else if (cur && path == "ListBucketResult/Contents/LastModified") {
            cur->last_modified = text;
        } else if (cur && path == "ListBucketResult/Contents/StorageClass") {
            cur->storage_class = text;
        } else if (path == "ListBucketResult/CommonPrefixes/Prefix") {
            page.common_prefixes.push_back(text);
        } else if (path == "ListBucketResult/NextContinuationToken") {
            page.next_continuation_token = text;
        } else if (path == "ListBucketResult/IsTruncated") {
            page.is_truncated = text == "true";
        }
    });
    if (!ok) {
        S3Error err(ErrorKind::Generic,
                    "ListObjectsV2 s3://" + req.context().bucket + ": the response is not valid XML", req.context());
        throw err;
    }
    if (!page.is_truncated) page.next_continuation_token.clear();
    return page;
}

std::shared_ptr<SimpleRequest> start_delete(std::shared_ptr<Client> client, const std::string &bucket,
                                            const std::string &key) {
    ErrorContext ctx{"DeleteObject", bucket, key};
    require_names(ctx);
    Address addr = address_of(client->config(), client->endpoint(), bucket, key);
    return SimpleRequest::start_request(client, ctx, "DELETE", "DeleteObject", addr, AWS_S3_META_REQUEST_TYPE_DEFAULT);
}

std::shared_ptr<SimpleRequest> start_copy(std::shared_ptr<Client> client, const std::string &src_bucket,
                                          const std::string &src_key, const std::string &dst_bucket,
                                          const std::string &dst_key) {
    ErrorContext ctx{"CopyObject", dst_bucket, dst_key, src_bucket, src_key};
    require_names(ctx);
    if (src_bucket.empty() || src_key.empty()) throw_invalid("copy source bucket and key must be set", ctx);
    Address addr = address_of(client->config(), client->endpoint(), dst_bucket, dst_key);
    std::string source = encode_path(src_bucket + "/" + src_key);
    Address src = address_of(client->config(), client->endpoint(), src_bucket, src_key);
    // x-amz-copy-source names the source; copy_source_uri lets the CRT HEAD it for its size
    // (to choose single CopyObject or multipart UploadPartCopy).
    return SimpleRequest::start_request(client, ctx, "PUT", "CopyObject", addr, AWS_S3_META_REQUEST_TYPE_COPY_OBJECT,
                                        nullptr, 0, {{"x-amz-copy-source", source}}, src.endpoint_uri + src.path);
}

}  // namespace s3torch
