// Presigned URLs: a GET (or PUT) of one object that anyone holding the URL may make, until it
// expires, signed with the client's credentials (SigV4 in the query string, as boto3's
// generate_presigned_url and `aws s3 presign` make them).
#pragma once

#include "s3torch/client.h"

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

struct aws_http_message;
struct aws_signable;
struct aws_signing_result;
struct aws_credentials_provider;

namespace s3torch {

// SigV4's limit on X-Amz-Expires: seven days.
constexpr int64_t kMaxPresignSeconds = 7 * 24 * 3600;

// One signing in progress. The signer may first fetch credentials (a profile's process, SSO,
// STS, IMDS), so it completes on a CRT thread; the caller waits. Owned by a shared_ptr the
// signer's callback holds too: a caller that stops waiting (a signal) leaves it to the callback.
class Presign {
  public:
    // Starts signing a `method` ("GET" or "PUT") of (bucket, key) valid for `expires_s` seconds
    // (1..kMaxPresignSeconds) from `at_s` (seconds since the epoch; none: now). Only the Host
    // header is signed: the URL's user sends no header of ours. Throws InvalidArgument for what
    // cannot be presigned so: an empty name, a client with an SSE-C key (the key would have to
    // travel with the URL), a PUT by a client with sse (its headers would have to be sent),
    // S3 Express (whose session credentials last minutes).
    static std::shared_ptr<Presign> start(std::shared_ptr<Client> client, const std::string &method,
                                          const std::string &bucket, const std::string &key, int64_t expires_s,
                                          std::optional<int64_t> at_s = std::nullopt);
    ~Presign();
    Presign(const Presign &) = delete;
    Presign &operator=(const Presign &) = delete;

    // True once signed or failed; waits up to `ms` for it.
    bool wait_for(int64_t ms);
    // After wait_for returned true: the URL, or the signer's error (a credentials error, say).
    std::string url();

  private:
    Presign() = default;
    static void on_signed(aws_signing_result *result, int error_code, void *user_data);

    std::shared_ptr<Client> client_;
    std::string operation_, bucket_, key_, endpoint_uri_;
    aws_http_message *message_ = nullptr;
    aws_signable *signable_ = nullptr;
    aws_credentials_provider *credentials_ = nullptr;  // held while the signer may use it
    std::shared_ptr<Presign> self_;                    // keeps this alive until the callback ran

    std::mutex mu_;  // guards the fields below, written by the signer's callback
    std::condition_variable cv_;
    bool done_ = false;
    int error_ = 0;
    std::string path_;  // the request path with the signed query
};

}  // namespace s3torch
