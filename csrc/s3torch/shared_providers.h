// The TLS contexts and credentials providers that the clients of one runtime share.
//
// Each client used to build its own: a TLS context (the CA bundle parsed again: 10-15 ms of a
// new client's first request) and, for the default chain or a profile, a provider that fetched
// credentials anew: a request to the container's or instance's endpoint, or an STS call under
// web identity (EKS IRSA), for every client, so for every rank at every DCP save and load. As
// boto3's default session does, clients with the same settings now share one: what decides a
// provider's credentials (the credentials setting, the profile, the proxy setting, the CA file's
// path and bytes, every AWS_* and proxy variable of the environment, the shared config and
// credentials files' paths and bytes) is its key, so a changed variable or file gives the next
// client a provider of its own. The CRT's cache refreshes shared credentials before they expire,
// as it did for one client's.
//
// A provider whose credentials S3 refused (403 or 401: an expired or unknown key, the wrong
// secret; or a policy, which a HEAD's answer cannot tell apart) is dropped from the cache by the
// client that saw it (forget()): the next client asks again, as every new client did before.
//
// Owned by the Runtime (runtime.h) and torn down with it before a fork(); every client holds its
// own references, released at its shutdown. The credentials its providers last handed out are
// carried into the next runtime, the parent's and the child's (carried_credentials.h). Any thread.
#pragma once

#include "s3torch/config.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

struct aws_client_bootstrap;
struct aws_credentials_provider;
struct aws_tls_ctx;

namespace s3torch {

class RememberedCredentials;

class SharedProviders {
  public:
    explicit SharedProviders(aws_client_bootstrap *bootstrap) : bootstrap_(bootstrap) {}
    ~SharedProviders();  // carries credentials over; releases the cache's references (clients release theirs)
    SharedProviders(const SharedProviders &) = delete;
    SharedProviders &operator=(const SharedProviders &) = delete;

    // What a client of cfg signs and connects with, each a new reference the caller releases:
    // `tls_ctx`, trusting cfg.ca_file (the system's trust store when empty), when the endpoint
    // speaks `tls` or the credentials are the default chain's or a profile's (which reach STS
    // or SSO with it), else nullptr; `credentials`, shared for the default chain and a profile,
    // new for the kinds that fetch nothing (keys given, the environment alone, anonymous).
    // Throws S3InvalidArgumentError for a CA file the CRT cannot use, and as
    // make_credentials_provider does (nothing is held then).
    struct ForClient {
        aws_tls_ctx *tls_ctx = nullptr;
        aws_credentials_provider *credentials = nullptr;
    };
    ForClient for_client(const ClientConfig &cfg, bool tls);
    // S3 refused what `provider` signed with: later clients get a new one.
    void forget(aws_credentials_provider *provider);

  private:
    // `ca_key`: the SHA-256 of the CA file's path and bytes, read once per client for both.
    aws_tls_ctx *tls_context(const ClientConfig &cfg, const std::string &ca_key);
    aws_credentials_provider *credentials(const ClientConfig &cfg, aws_tls_ctx *tls_ctx, const std::string &ca_key);

    template <typename T>
    struct Entry {
        std::string key;  // a SHA-256 of what decides the object (it holds secrets: never the text)
        T *object;
        uint64_t used;                                  // when last handed out, in calls: the least recent goes first
        std::shared_ptr<RememberedCredentials> memory;  // a credentials provider's (carried_credentials.h)
    };
    aws_client_bootstrap *bootstrap_;
    std::mutex mu_;  // guards the fields below
    std::vector<Entry<aws_tls_ctx>> tls_;
    std::vector<Entry<aws_credentials_provider>> credentials_;
    uint64_t calls_ = 0;
};

}  // namespace s3torch
