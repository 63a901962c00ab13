#include "s3torch/request_headers.h"

#include "s3torch/runtime.h"

#include <aws/cal/hash.h>
#include <aws/common/byte_buf.h>
#include <aws/common/encoding.h>

namespace s3torch {

namespace {

bool is_one_of(const std::string &operation, std::initializer_list<const char *> names) {
    for (const char *name : names)
        if (operation == name) return true;
    return false;
}

}  // namespace

std::optional<std::string> base64_md5(const void *data, size_t len) {
    init_crt_libraries();  // the MD5 is aws-c-cal's
    uint8_t digest[AWS_MD5_LEN];
    aws_byte_buf md5 = aws_byte_buf_from_empty_array(digest, sizeof(digest));
    aws_byte_cursor in = aws_byte_cursor_from_array(data, len);
    if (aws_md5_compute(aws_default_allocator(), &in, &md5, 0) != AWS_OP_SUCCESS) return std::nullopt;
    char text[32] = {0};
    aws_byte_buf out = aws_byte_buf_from_empty_array(text, sizeof(text));
    aws_byte_cursor digest_cur = aws_byte_cursor_from_buf(&md5);
    if (aws_base64_encode(&digest_cur, &out)) return std::nullopt;
    return std::string(text, out.len);
}

std::optional<std::string> customer_key_md5(const std::string &key_base64) {
    aws_byte_cursor in = aws_byte_cursor_from_array(key_base64.data(), key_base64.size());
    size_t decoded = 0;
    if (key_base64.size() != 44 || aws_base64_compute_decoded_len(&in, &decoded) || decoded != 32) return std::nullopt;
    uint8_t raw[32];
    aws_byte_buf key = aws_byte_buf_from_empty_array(raw, sizeof(raw));
    if (aws_base64_decode(&in, &key) || key.len != 32) return std::nullopt;
    std::optional<std::string> md5 = base64_md5(raw, sizeof(raw));
    aws_secure_zero(raw, sizeof(raw));
    return md5;
}

std::string refusal_hint(const S3Error &e, const ClientConfig &config) {
    std::string hint;
    auto add = [&](const std::string &more) { hint += (hint.empty() ? "" : "; ") + more; };
    const std::string &op = e.context.operation;
    const bool has_key = !config.sse_customer_key.empty();
    const bool bad_request =
        e.http_status == 400 && (e.s3_code.empty() || e.s3_code == "InvalidRequest" || e.s3_code == "InvalidArgument");
    if (is_one_of(op, {"GetObject", "HeadObject", "GetObjectAttributes"})) {
        if (!has_key && bad_request)
            add("if the object was written with a customer key (SSE-C), every read and HEAD must present it: "
                "set S3ClientConfig(sse_customer_key=...)");
        else if (has_key && e.http_status == 403)
            add("or the object was written with a customer key (SSE-C) other than this client's sse_customer_key");
        else if (has_key && bad_request)
            add("S3 refuses sse_customer_key for an object written without a customer key (SSE-C): read it with a "
                "client without one");
    }
    if (!config.expected_bucket_owner.empty() && e.http_status == 403)
        add("or bucket '" + e.context.bucket + "' is not owned by account " + config.expected_bucket_owner +
            " (expected_bucket_owner)");
    return hint;
}

Headers configured_headers(const ClientConfig &config, const std::string &operation) {
    Headers h;
    if (!config.user_agent.empty()) h.emplace_back("User-Agent", config.user_agent);
    if (config.requester_pays) h.emplace_back("x-amz-request-payer", "requester");
    if (!config.expected_bucket_owner.empty()) {
        h.emplace_back("x-amz-expected-bucket-owner", config.expected_bucket_owner);
        if (operation == "CopyObject")  // the source's bucket too (aws-c-s3 forwards it to its HEAD)
            h.emplace_back("x-amz-source-expected-bucket-owner", config.expected_bucket_owner);
    }
    const bool writes = operation == "PutObject";
    if ((writes || operation == "CopyObject") && !config.sse.empty()) {
        h.emplace_back("x-amz-server-side-encryption", config.sse);
        if (!config.sse_kms_key_id.empty())
            h.emplace_back("x-amz-server-side-encryption-aws-kms-key-id", config.sse_kms_key_id);
    }
    if (!config.sse_customer_key.empty() &&
        (writes || is_one_of(operation, {"GetObject", "HeadObject", "GetObjectAttributes"}))) {
        // validate() has checked the key; the MD5 lets S3 check it arrived intact.
        h.emplace_back("x-amz-server-side-encryption-customer-algorithm", "AES256");
        h.emplace_back("x-amz-server-side-encryption-customer-key", config.sse_customer_key);
        h.emplace_back("x-amz-server-side-encryption-customer-key-MD5",
                       customer_key_md5(config.sse_customer_key).value_or(""));
    }
    return h;
}

}  // namespace s3torch
