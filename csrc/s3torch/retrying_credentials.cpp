#include "s3torch/retrying_credentials.h"

#include "s3torch/credentials.h"

#include <aws/auth/credentials.h>
#include <aws/common/task_scheduler.h>
#include <aws/io/channel_bootstrap.h>
#include <aws/io/event_loop.h>

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <random>

namespace s3torch {

namespace {

// The most the first retry waits; each later one's bound doubles (1, 2, 4, 8 s).
constexpr uint64_t kFirstBackoffMs = 1000;

// Fetches of the process past their first attempt (credentials_retrying). A fork()ed child has
// none: those of its parent (a fork with requests in flight) are not its own.
std::atomic<int> g_retrying{0};

void forget_retrying_in_child() {
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { g_retrying.store(0); }); });
}

// What the delegate provider holds: the source and the event loops retries wait on. Freed when
// the delegate is gone and no fetch is under way (each holds a reference).
struct Source {
    aws_credentials_provider *provider;
    aws_event_loop_group *loops;
    std::atomic<int> refs{1};  // the delegate's
};

void unref(Source *s) {
    if (s->refs.fetch_sub(1) != 1) return;
    aws_credentials_provider_release(s->provider);
    aws_event_loop_group_release(s->loops);
    delete s;
}

// One caller's fetch, from its first attempt to its answer. Touched by one thread at a time: the
// asking thread, then the thread of each answer, then the event loop of each retry.
struct Fetch {
    Source *source;
    aws_on_get_credentials_callback_fn *callback;
    void *user_data;
    int attempt = 1;
    int last_error = 0;
    aws_task task;
};

uint64_t random_ms(uint64_t bound) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    return std::uniform_int_distribution<uint64_t>(0, bound)(rng);
}

void ask(Fetch *f);

void answer(Fetch *f, aws_credentials *credentials, int error) {
    if (f->attempt > 1) g_retrying.fetch_sub(1);
    f->callback(credentials, error, f->user_data);
    unref(f->source);
    delete f;
}

void on_retry(aws_task *, void *arg, aws_task_status status) {
    auto *f = static_cast<Fetch *>(arg);
    if (status == AWS_TASK_STATUS_RUN_READY) ask(f);
    else answer(f, nullptr, f->last_error);  // the event loops are shutting down
}

void on_answer(aws_credentials *credentials, int error, void *user_data) {
    auto *f = static_cast<Fetch *>(user_data);
    if (credentials || f->attempt >= kCredentialsAttempts) {
        answer(f, credentials, error);
        return;
    }
    f->last_error = error;
    const uint64_t wait_ns = random_ms(kFirstBackoffMs << (f->attempt - 1)) * 1000000ull;
    if (f->attempt++ == 1) g_retrying.fetch_add(1);
    aws_event_loop *loop = aws_event_loop_group_get_next_loop(f->source->loops);
    uint64_t now = 0;
    if (!loop || aws_event_loop_current_clock_time(loop, &now) != AWS_OP_SUCCESS) {
        answer(f, nullptr, error);
        return;
    }
    aws_task_init(&f->task, on_retry, f, "s3torch_credentials_retry");
    aws_event_loop_schedule_task_future(loop, &f->task, now + wait_ns);
}

void ask(Fetch *f) {
    if (aws_credentials_provider_get_credentials(f->source->provider, on_answer, f) != AWS_OP_SUCCESS)
        on_answer(nullptr, aws_last_error(), f);
}

int get_credentials(void *delegate_user_data, aws_on_get_credentials_callback_fn callback, void *user_data) {
    auto *source = static_cast<Source *>(delegate_user_data);
    source->refs.fetch_add(1);
    ask(new Fetch{source, callback, user_data});
    return AWS_OP_SUCCESS;
}

void on_delegate_gone(void *user_data) { unref(static_cast<Source *>(user_data)); }

}  // namespace

bool credentials_retrying() { return g_retrying.load() > 0; }

aws_credentials_provider *with_retries(aws_credentials_provider *source, aws_client_bootstrap *bootstrap) {
    if (!source) return nullptr;
    forget_retrying_in_child();
    auto *s = new Source{source, aws_event_loop_group_acquire(bootstrap->event_loop_group)};
    aws_credentials_provider *p = new_delegate_provider(get_credentials, s, on_delegate_gone);
    if (!p) unref(s);  // no delegate to call on_delegate_gone
    return p;
}

}  // namespace s3torch
