// Client: one aws_s3_client (connection pools, part-buffer pool, retry strategy) per
// configuration, created lazily and released before fork().
//
// Threads: any caller thread may start transfers; the CRT's event-loop threads run the
// callbacks of every Transfer. `mu_` guards the lazily built CRT objects below; transfers take
// a reference to the aws_s3_client when they start, so `suspend()` (fork) only tears down a
// client with no transfer in flight.
//
// fork(): CRT objects belong to the process that built them. A Client used in a forked child
// whose parent did not suspend it (transfers were in flight) leaks the parent's objects,
// untouched, and builds its own; destroyed in such a child, it frees nothing of the CRT.
#pragma once

#include "s3torch/config.h"
#include "s3torch/endpoint_health.h"
#include "s3torch/fork.h"
#include "s3torch/retry.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

struct aws_s3_client;
struct aws_retry_strategy;
struct aws_credentials_provider;
struct aws_tls_ctx;
struct aws_s3_meta_request;
struct aws_s3_meta_request_options;
struct aws_signing_config_aws;

namespace s3torch {

class Runtime;

class Client : public std::enable_shared_from_this<Client> {
  public:
    // Validates `config` (throws S3Error InvalidArgument); creates no CRT objects yet.
    static std::shared_ptr<Client> create(ClientConfig config);
    ~Client();
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;

    const ClientConfig &config() const { return config_; }
    const Endpoint &endpoint() const { return endpoint_; }
    // Whether connections go through the proxy the environment names: proxy_from_env, and the
    // endpoint is not loopback (a proxy cannot reach this machine's loopback).
    bool env_proxy() const;

    // Create a meta request on the lazily created aws_s3_client, signed as `signing` says
    // (empty name and region: the client's own). Counts it in flight until
    // `transfer_finished()`. Returns nullptr with aws_last_error() set on failure.
    aws_s3_meta_request *make_meta_request(aws_s3_meta_request_options &options, const Signing &signing);
    // The configuration a request addressed with `signing` is signed with, into `out`: the
    // client's, with the algorithm, region and service `signing` names (its strings, which `out`
    // points into, must outlive it). Its credentials provider is acquired for the caller, who
    // releases it (aws_credentials_provider_release). Builds the aws_s3_client if need be.
    void signing_config(const Signing &signing, aws_signing_config_aws &out);
    void transfer_finished();
    // S3 refused a request this client signed (403, 401: credentials expired, unknown, or the
    // wrong secret, or a policy): clients made from now on do not share its credentials
    // (shared_providers.h); they ask for them again.
    void credentials_refused();
    int64_t in_flight() const { return in_flight_.load(); }
    // A CRT part buffer (its ticket) outlives its transfer in a consumer's hands (a GetStream
    // chunk). The buffer belongs to client_'s pool, which holds no count of its tickets, so
    // the client is not suspended (prepare_fork) while any is held.
    void buffer_held() { held_buffers_.fetch_add(1); }
    void buffer_released() { held_buffers_.fetch_sub(1); }
    // Nothing of client_ in use: no transfer in flight, no buffer held.
    bool idle() const { return in_flight_.load() == 0 && held_buffers_.load() == 0; }

    // The endpoint is known to be right: it has answered (an HTTP response of any status) a
    // client of this process, or of the process that pickled the object, or the configuration
    // says so. From then on retries ride out outages instead of failing fast (retry.h).
    void mark_reached() { health_->reached.store(true); }
    bool reached() const { return health_->reached.load(); }
    // What the process knows of this client's endpoint (shared by every client of it).
    EndpointHealth &health() { return *health_; }
    // When a request issued at `issued_ns` gives up retrying at the latest (0: attempts decide).
    uint64_t retry_deadline_ns(uint64_t issued_ns) const;
    // Run `fn` on a CRT event-loop thread in about `delay_ms` (never if the runtime shuts down
    // first). `fn` must not block.
    void run_after(uint64_t delay_ms, std::function<void()> fn);
    // How many requests may be in flight while the server throttles (0: no limit now).
    uint64_t throttle_limit();

    // Multipart uploads whose abort could not reach the server (an outage): kept so a later
    // call can abort them (uploads.h). Any thread.
    struct PendingAbort {
        std::string bucket, key, upload_id;  // upload_id URI-encoded
    };
    void remember_abort(PendingAbort abort);
    std::vector<PendingAbort> take_pending_aborts();
    std::vector<PendingAbort> pending_aborts();  // a copy; they stay remembered

    // Release the aws_s3_client and wait for its shutdown, if nothing is in flight. Used
    // before fork(); the next request builds a new one. Returns false if transfers are running.
    bool suspend();

    // Suspend every live client, then shut the runtime down and join CRT threads.
    // Returns false (and leaves things running) if any transfer is in flight.
    static bool prepare_fork();

  private:
    explicit Client(ClientConfig config);
    RetrySettings retry_settings() const;
    aws_s3_client *ensure_locked();
    // Whether `signing` differs from the client's own configuration; if so, applies it to `cfg`.
    bool apply_signing(const Signing &signing, aws_signing_config_aws &cfg) const;
    void release_locked(bool wait);
    // In a fork()ed child: forget (leak) the CRT objects built by the parent.
    void abandon_if_foreign_locked();

    ClientConfig config_;
    Endpoint endpoint_;
    std::mutex mu_;  // guards the fields below
    std::shared_ptr<Runtime> runtime_;
    aws_s3_client *client_ = nullptr;
    // Our reference to client_'s retry strategy.
    std::atomic<aws_retry_strategy *> retry_{nullptr};
    aws_credentials_provider *credentials_ = nullptr;
    aws_tls_ctx *tls_ctx_ = nullptr;
    std::unique_ptr<aws_signing_config_aws> signing_;
    void *shutdown_state_ = nullptr;  // ShutdownState of client_, see client.cpp
    ProcessOwner owner_;              // the process that built client_
    std::atomic<int64_t> in_flight_{0};
    std::atomic<int64_t> held_buffers_{0};
    std::shared_ptr<EndpointHealth> health_;  // shared by every client of the endpoint
    std::mutex aborts_mu_;                    // guards pending_aborts_
    std::vector<PendingAbort> pending_aborts_;
};

}  // namespace s3torch
