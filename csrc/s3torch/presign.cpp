#include "s3torch/presign.h"

#include "s3torch/errors.h"
#include "s3torch/request.h"

#include <aws/auth/credentials.h>
#include <aws/auth/signable.h>
#include <aws/auth/signing.h>
#include <aws/auth/signing_config.h>
#include <aws/auth/signing_result.h>
#include <aws/common/date_time.h>
#include <aws/http/request_response.h>

#include <chrono>

namespace s3torch {

std::shared_ptr<Presign> Presign::start(std::shared_ptr<Client> client, const std::string &method,
                                        const std::string &bucket, const std::string &key, int64_t expires_s,
                                        std::optional<int64_t> at_s) {
    if (method != "GET" && method != "PUT") throw_invalid("a presigned URL is for GET or PUT, not '" + method + "'");
    const ErrorContext ctx{method == "GET" ? "PresignGetObject" : "PresignPutObject", bucket, key};
    require_names(ctx);
    if (expires_s < 1 || expires_s > kMaxPresignSeconds)
        throw_invalid(
            "a presigned URL expires 1 to 604800 seconds (7 days) after it is made, not " + std::to_string(expires_s),
            ctx);
    const ClientConfig &config = client->config();
    if (!config.sse_customer_key.empty())
        throw_invalid("a client with an SSE-C key cannot presign: the key would have to travel with the URL", ctx);
    if (method == "PUT" && !config.sse.empty())
        throw_invalid(
            "a presigned PUT cannot carry the client's sse: its headers would have to be sent with the upload "
            "(without them the object gets the bucket's default encryption)",
            ctx);
    // Requester Pays: the URL's user pays, which S3 takes as a signed query parameter.
    const std::string query = config.requester_pays ? "x-amz-request-payer=requester" : "";
    Address addr = address_of(config, client->endpoint(), bucket, key, query);
    if (addr.signing.algorithm == SigningAlgorithm::S3Express)
        throw_invalid(
            "S3 Express One Zone buckets cannot be presigned here: their session credentials last "
            "minutes",
            ctx);

    std::shared_ptr<Presign> p(new Presign());
    p->client_ = std::move(client);
    p->operation_ = ctx.operation;
    p->bucket_ = bucket;
    p->key_ = key;
    p->endpoint_uri_ = addr.endpoint_uri;
    aws_allocator *alloc = aws_default_allocator();
    p->message_ = make_message(method.c_str(), addr);
    p->signable_ = aws_signable_new_http_request(alloc, p->message_);
    if (!p->signable_) throw error_from_crt(aws_last_error(), ctx);

    aws_signing_config_aws cfg;
    p->client_->signing_config(addr.signing, cfg);  // `addr` outlives the call below, which copies
    p->credentials_ = cfg.credentials_provider;
    cfg.signature_type = AWS_ST_HTTP_REQUEST_QUERY_PARAMS;
    cfg.signed_body_header = AWS_SBHT_NONE;  // nothing the URL's user would have to send
    cfg.signed_body_value = g_aws_signed_body_value_unsigned_payload;
    cfg.expiration_in_seconds = static_cast<uint64_t>(expires_s);
    if (at_s) aws_date_time_init_epoch_secs(&cfg.date, static_cast<double>(*at_s));
    else aws_date_time_init_now(&cfg.date);

    p->self_ = p;
    if (aws_sign_request_aws(alloc, p->signable_, reinterpret_cast<aws_signing_config_base *>(&cfg), on_signed,
                             p.get()) != AWS_OP_SUCCESS) {
        p->self_.reset();
        throw error_from_crt(aws_last_error(), ctx);
    }
    return p;
}

void Presign::on_signed(aws_signing_result *result, int error_code, void *user_data) {
    auto *p = static_cast<Presign *>(user_data);
    std::shared_ptr<Presign> self = std::move(p->self_);  // dropped last, after the fields are set
    int error = error_code;
    std::string path;
    if (error == AWS_ERROR_SUCCESS) {
        // Anonymous credentials (a public bucket) sign nothing: the URL is the object's own.
        if (aws_apply_signing_result_to_http_request(p->message_, aws_default_allocator(), result) != AWS_OP_SUCCESS)
            error = aws_last_error();
        aws_byte_cursor cur;
        if (error == AWS_ERROR_SUCCESS && aws_http_message_get_request_path(p->message_, &cur) == AWS_OP_SUCCESS)
            path.assign(reinterpret_cast<const char *>(cur.ptr), cur.len);
    }
    std::lock_guard<std::mutex> lock(p->mu_);
    p->error_ = error;
    p->path_ = std::move(path);
    p->done_ = true;
    p->cv_.notify_all();
}

Presign::~Presign() {
    if (signable_) aws_signable_destroy(signable_);
    if (message_) aws_http_message_release(message_);
    aws_credentials_provider_release(credentials_);
}

bool Presign::wait_for(int64_t ms) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return done_; });
}

std::string Presign::url() {
    std::lock_guard<std::mutex> lock(mu_);
    const ErrorContext ctx{operation_, bucket_, key_};
    if (!done_) throw_invalid("the URL is not signed yet", ctx);
    if (error_ != AWS_ERROR_SUCCESS) throw error_from_crt(error_, ctx);
    return endpoint_uri_ + path_;
}

}  // namespace s3torch
