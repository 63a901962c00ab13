#include "s3torch/client.h"

#include "s3torch/credentials.h"
#include "s3torch/endpoint_health.h"
#include "s3torch/errors.h"
#include "s3torch/request.h"
#include "s3torch/retry.h"
#include "s3torch/runtime.h"
#include "s3torch/shared_providers.h"

#include <aws/auth/credentials.h>
#include <aws/auth/signing_config.h>
#include <aws/common/task_scheduler.h>
#include <aws/http/connection.h>
#include <aws/io/event_loop.h>
#include <aws/io/retry_strategy.h>
#include <aws/io/tls_channel_handler.h>
#include <aws/s3/s3_client.h>

#include <cctype>
#include <condition_variable>
#include <map>
#include <set>

namespace s3torch {

namespace {

// localhost, 127.0.0.0/8 or ::1: an endpoint on this machine.
bool is_loopback(const std::string &host) {
    if (host == "localhost" || host == "::1") return true;
    if (host.rfind("127.", 0) != 0) return false;
    for (char c : host)
        if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.')) return false;
    return true;
}

// Every TLS handshake's result on a connection to the endpoint whose EndpointHealth is
// `user_data` (an entry of the process-wide table, never freed). Called on the connection's
// event-loop thread as soon as the handshake ends, before s2n's delay of a failure.
void on_tls_negotiation(aws_channel_handler *, aws_channel_slot *, int error_code, void *user_data) {
    auto *health = static_cast<EndpointHealth *>(user_data);
    if (error_code == AWS_ERROR_SUCCESS) health->tls_refused.store(false);
    else if (error_code == AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE) health->tls_refused.store(true);
}

// Every live Client, for prepare_fork(). Guarded by g_clients_mu.
std::mutex g_clients_mu;
std::set<Client *> g_clients;

// Completion of an aws_s3_client's asynchronous shutdown. Heap-allocated: the callback
// may fire after the Client is gone. Owns the objects the aws_s3_client used.
struct ShutdownState {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    bool waited = false;  // a thread waits on it and frees it; else the callback frees it
    aws_credentials_provider *credentials = nullptr;
    aws_tls_ctx *tls_ctx = nullptr;
    std::shared_ptr<Runtime> runtime;
    std::unique_ptr<aws_signing_config_aws> signing;
    ~ShutdownState() { Runtime::release(std::move(runtime)); }
};

void on_client_shutdown(void *user_data) {
    auto *st = static_cast<ShutdownState *>(user_data);
    aws_credentials_provider_release(st->credentials);
    if (st->tls_ctx) aws_tls_ctx_release(st->tls_ctx);
    st->credentials = nullptr;
    st->tls_ctx = nullptr;
    std::unique_lock<std::mutex> lock(st->mu);
    st->done = true;
    if (!st->waited) {
        lock.unlock();
        delete st;  // wakes a Runtime::shutdown() waiting for this client to let go
        return;
    }
    st->cv.notify_all();
}

}  // namespace

std::shared_ptr<Client> Client::create(ClientConfig config) {
    return std::shared_ptr<Client>(new Client(std::move(config)));
}

Client::Client(ClientConfig config) : config_(std::move(config)) {
    endpoint_ = resolve_config(config_);
    health_ = endpoint_health(endpoint_.url());
    if (config_.known_endpoint) health_->reached.store(true);
    std::lock_guard<std::mutex> lock(g_clients_mu);
    g_clients.insert(this);
}

Client::~Client() {
    {
        std::lock_guard<std::mutex> lock(g_clients_mu);
        g_clients.erase(this);
    }
    std::lock_guard<std::mutex> lock(mu_);
    abandon_if_foreign_locked();
    // May run on a CRT thread (the last transfer let go of us there): never wait here.
    release_locked(false);
}

void Client::abandon_if_foreign_locked() {
    if (!client_ || !owner_.foreign()) return;
    // Built by the parent of this fork()ed child and never suspended: its threads are gone and
    // its locks may be held forever. Releasing anything would touch them; leak it all.
    new std::shared_ptr<Runtime>(std::move(runtime_));
    (void)signing_.release();
    client_ = nullptr;
    retry_.store(nullptr);
    credentials_ = nullptr;
    tls_ctx_ = nullptr;
    shutdown_state_ = nullptr;
    in_flight_.store(0);  // the parent's transfers and buffers are not ours
    held_buffers_.store(0);
}

aws_s3_client *Client::ensure_locked() {
    abandon_if_foreign_locked();
    if (client_) return client_;
    runtime_ = Runtime::acquire();
    // Let go of the runtime again if anything below throws (a missing profile, a bad CA
    // file): a client left holding it without an aws_s3_client would make every later fork()
    // wait kClientShutdownWait for it in Runtime::shutdown, then keep the CRT threads running.
    struct RuntimeGuard {
        std::shared_ptr<Runtime> &runtime;
        bool kept = false;
        ~RuntimeGuard() {
            if (!kept) Runtime::release(std::move(runtime));
        }
    } runtime_guard{runtime_};
    aws_allocator *alloc = runtime_->allocator();

    aws_retry_strategy *retry = nullptr;
    if (config_.max_attempts > 1) {
        retry = new_retry_strategy(alloc, runtime_->event_loop_group(), retry_settings());
        if (!retry) throw error_from_crt(aws_last_error(), {"CreateS3Client", "", ""});
    }
    // Released on every error below; the client keeps it on success.
    std::unique_ptr<aws_retry_strategy, void (*)(aws_retry_strategy *)> retry_guard(
        retry, [](aws_retry_strategy *r) { aws_retry_strategy_release(r); });

    // Shared with the runtime's other clients of the same settings (shared_providers.h).
    const SharedProviders::ForClient shared = runtime_->providers().for_client(config_, endpoint_.tls);
    tls_ctx_ = shared.tls_ctx;
    credentials_ = shared.credentials;

    signing_.reset(new aws_signing_config_aws());
    aws_s3_init_default_signing_config(
        signing_.get(), aws_byte_cursor_from_array(config_.region.data(), config_.region.size()), credentials_);
    signing_->flags.use_double_uri_encode = false;

    aws_tls_connection_options tls_conn;
    AWS_ZERO_STRUCT(tls_conn);
    if (tls_ctx_) {
        aws_tls_connection_options_init_from_ctx(&tls_conn, tls_ctx_);
        tls_conn.on_negotiation_result = on_tls_negotiation;  // copied with the options by the CRT
        tls_conn.user_data = health_.get();
    }

    aws_s3_client_config cc;
    AWS_ZERO_STRUCT(cc);
    cc.region = aws_byte_cursor_from_array(config_.region.data(), config_.region.size());
    cc.client_bootstrap = runtime_->bootstrap();
    cc.tls_mode = endpoint_.tls ? AWS_MR_TLS_ENABLED : AWS_MR_TLS_DISABLED;
    cc.tls_connection_options = tls_ctx_ && endpoint_.tls ? &tls_conn : nullptr;
    cc.signing_config = signing_.get();
    cc.part_size = config_.part_size;
    cc.throughput_target_gbps = config_.throughput_target_gbps;
    cc.memory_limit_in_bytes = config_.memory_limit_bytes;
    // Retries: our strategy (retry.h); max_attempts 1 turns them off in the CRT itself.
    if (retry) cc.retry_strategy = retry;
    else cc.retry_config.retry_mode = AWS_S3_RETRY_MODE_NONE;
    cc.connect_timeout_ms = config_.connect_timeout_ms;
    // A connection that goes silent mid-request (a peer gone without FIN or RST) is closed once
    // no byte has moved for stall_timeout_s, and the request is retried; the CRT's own default
    // waits 30 s. The CRT copies these options.
    aws_http_connection_monitoring_options monitoring;
    AWS_ZERO_STRUCT(monitoring);
    monitoring.minimum_throughput_bytes_per_second = 1;
    monitoring.allowable_throughput_failure_interval_seconds = config_.stall_timeout_s;
    cc.monitoring_options = &monitoring;
    cc.enable_s3express = config_.s3express;
    // A proxy from the environment, read by aws-c-http for each new connection (NO_PROXY
    // included; an https proxy URL gets TLS of its own). aws-c-s3 turns that on when given no
    // settings; s3torch always gives them: off when asked, and off for a loopback endpoint,
    // which a proxy cannot reach (its loopback is not ours; Go's HTTP client does the same).
    cc.proxy_ev_settings = env_proxy_settings(env_proxy());
    // Back-pressure is on for the client, but only streaming GETs use a bounded window:
    // every other GET opens its window fully as soon as it is created.
    cc.enable_read_backpressure = true;
    cc.initial_read_window = 1;

    auto *st = new ShutdownState();
    cc.shutdown_callback = on_client_shutdown;
    cc.shutdown_callback_user_data = st;
    client_ = aws_s3_client_new(alloc, &cc);
    if (tls_ctx_) aws_tls_connection_options_clean_up(&tls_conn);
    if (!client_) {
        int err = aws_last_error();
        delete st;
        aws_credentials_provider_release(credentials_);
        credentials_ = nullptr;
        if (tls_ctx_) aws_tls_ctx_release(tls_ctx_);
        tls_ctx_ = nullptr;
        throw error_from_crt(err, {"CreateS3Client", "", ""});
    }
    // The shutdown state takes ownership at release time; remember it through the
    // user-data pointer we gave the CRT.
    shutdown_state_ = st;
    retry_.store(retry_guard.release());  // the aws_s3_client holds its own reference too
    runtime_guard.kept = true;
    owner_ = ProcessOwner();
    return client_;
}

void Client::release_locked(bool wait) {
    if (!client_) return;
    auto *st = static_cast<ShutdownState *>(shutdown_state_);
    st->credentials = credentials_;
    st->tls_ctx = tls_ctx_;
    st->runtime = std::move(runtime_);
    st->signing = std::move(signing_);
    credentials_ = nullptr;
    tls_ctx_ = nullptr;
    shutdown_state_ = nullptr;
    aws_s3_client *c = client_;
    client_ = nullptr;
    aws_retry_strategy_release(retry_.exchange(nullptr));
    if (wait) {
        std::unique_lock<std::mutex> lock(st->mu);
        st->waited = true;
        lock.unlock();
        aws_s3_client_release(c);
        lock.lock();
        st->cv.wait(lock, [&] { return st->done; });
        lock.unlock();
        delete st;
    } else {
        aws_s3_client_release(c);
    }
}

aws_s3_meta_request *Client::make_meta_request(aws_s3_meta_request_options &options, const Signing &signing) {
    std::lock_guard<std::mutex> lock(mu_);
    aws_s3_client *c = ensure_locked();
    // Another algorithm, service or region than the client's (an access point in another
    // region, Object Lambda, SigV4A, S3 Express): a copy of its configuration, which the meta
    // request copies in turn.
    aws_signing_config_aws own = *signing_;
    if (apply_signing(signing, own)) options.signing_config = &own;
    aws_s3_meta_request *mr = aws_s3_client_make_meta_request(c, &options);
    if (mr) in_flight_.fetch_add(1);
    return mr;
}

bool Client::apply_signing(const Signing &signing, aws_signing_config_aws &cfg) const {
    const bool other_region = !signing.region.empty() && signing.region != config_.region;
    const bool other_name = !signing.name.empty() && signing.name != "s3";
    if (signing.algorithm == SigningAlgorithm::V4 && !other_region && !other_name) return false;
    if (signing.algorithm == SigningAlgorithm::V4A) cfg.algorithm = AWS_SIGNING_ALGORITHM_V4_ASYMMETRIC;
    if (signing.algorithm == SigningAlgorithm::S3Express) cfg.algorithm = AWS_SIGNING_ALGORITHM_V4_S3EXPRESS;
    if (other_region) cfg.region = aws_byte_cursor_from_array(signing.region.data(), signing.region.size());
    if (other_name) cfg.service = aws_byte_cursor_from_array(signing.name.data(), signing.name.size());
    return true;
}

void Client::signing_config(const Signing &signing, aws_signing_config_aws &out) {
    std::lock_guard<std::mutex> lock(mu_);
    ensure_locked();
    out = *signing_;
    apply_signing(signing, out);
    aws_credentials_provider_acquire(out.credentials_provider);
}

void Client::transfer_finished() { in_flight_.fetch_sub(1); }

void Client::credentials_refused() {
    std::lock_guard<std::mutex> lock(mu_);
    if (client_ && runtime_ && !owner_.foreign()) runtime_->providers().forget(credentials_);
}

bool Client::env_proxy() const { return config_.proxy_from_env && !is_loopback(endpoint_.host); }

namespace {

struct DelayedTask {
    aws_task task;
    std::function<void()> fn;
};

void run_delayed(aws_task *, void *arg, aws_task_status status) {
    std::unique_ptr<DelayedTask> t(static_cast<DelayedTask *>(arg));
    if (status == AWS_TASK_STATUS_RUN_READY) t->fn();
}

}  // namespace

RetrySettings Client::retry_settings() const {
    RetrySettings rs;
    rs.max_attempts = config_.max_attempts;
    rs.retry_timeout_ms = static_cast<uint64_t>(config_.retry_timeout_s) * 1000ull;
    rs.health = health_;
    return rs;
}

uint64_t Client::retry_deadline_ns(uint64_t issued_ns) const {
    return config_.max_attempts > 1 ? s3torch::retry_deadline_ns(retry_settings(), issued_ns) : 0;
}

void Client::run_after(uint64_t delay_ms, std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!runtime_) return;
    aws_event_loop *loop = aws_event_loop_group_get_next_loop(runtime_->event_loop_group());
    auto *t = new DelayedTask{{}, std::move(fn)};
    aws_task_init(&t->task, run_delayed, t, "s3torch_delayed");
    uint64_t now = 0;
    aws_event_loop_current_clock_time(loop, &now);
    aws_event_loop_schedule_task_future(loop, &t->task, now + delay_ms * 1000000ull);
}

uint64_t Client::throttle_limit() {
    std::lock_guard<std::mutex> lock(mu_);  // keeps retry_ alive while we read it
    return retry_strategy_concurrency_limit(retry_.load());
}

void Client::remember_abort(PendingAbort abort) {
    std::lock_guard<std::mutex> lock(aborts_mu_);
    for (const PendingAbort &p : pending_aborts_)
        if (p.upload_id == abort.upload_id && p.bucket == abort.bucket && p.key == abort.key) return;
    pending_aborts_.push_back(std::move(abort));
}

std::vector<Client::PendingAbort> Client::take_pending_aborts() {
    std::lock_guard<std::mutex> lock(aborts_mu_);
    return std::move(pending_aborts_);
}

std::vector<Client::PendingAbort> Client::pending_aborts() {
    std::lock_guard<std::mutex> lock(aborts_mu_);
    return pending_aborts_;
}

bool Client::suspend() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle()) return false;
    release_locked(true);
    return true;
}

bool Client::prepare_fork() {
    {
        std::lock_guard<std::mutex> lock(g_clients_mu);
        for (Client *c : g_clients) {
            std::lock_guard<std::mutex> client_lock(c->mu_);
            c->abandon_if_foreign_locked();  // this process is itself a child forked mid-transfer
        }
        for (Client *c : g_clients)
            if (!c->idle()) return false;
        for (Client *c : g_clients)
            if (!c->suspend()) return false;
    }
    // Not under g_clients_mu: a Client destroyed on a CRT thread meanwhile takes it.
    return Runtime::shutdown();
}

}  // namespace s3torch
