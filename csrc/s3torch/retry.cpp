#include "s3torch/retry.h"

#include "s3torch/config.h"

#include <aws/common/clock.h>
#include <aws/common/device_random.h>
#include <aws/common/task_scheduler.h>
#include <aws/io/event_loop.h>
#include <aws/io/retry_strategy.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <new>

namespace s3torch {

namespace {

constexpr uint64_t kNsPerMs = 1000000ull;
constexpr double kNoLimit = 1e18;
// Throttling never takes the limit below this many requests.
constexpr double kMinLimit = 1.0;
// One multiplicative decrease per this long: a burst of 503s from requests that were all in
// flight together is one signal, not fifty.
constexpr uint64_t kDecreaseSpacingNs = 250 * kNsPerMs;
// Above this the limit is lifted altogether (the CRT's connection pool bounds requests again).
constexpr double kLiftLimit = 4096.0;

struct Strategy;

// One request's token, from its first attempt until the CRT releases it.
struct Token {
    aws_retry_token base;
    Strategy *strategy = nullptr;
    aws_event_loop *loop = nullptr;  // where this request's callbacks run
    aws_task task;
    uint64_t created_ns = 0;  // when the request asked for its token (waiting for one counts)
    // Touched only by the CRT's calls for this one request, which it makes one at a time.
    uint32_t attempts = 1;
    bool counted = false;      // holds one of Strategy::in_flight (Strategy::mu)
    bool needs_token = false;  // gave its slot back when throttled: the next run of `task` waits
                               // for one before delivering ready_fn (Strategy::mu)
    // The callback the next run of `task` delivers. Guarded by mu.
    std::mutex mu;
    aws_retry_strategy_on_retry_token_acquired_fn *acquired_fn = nullptr;
    aws_retry_strategy_on_retry_ready_fn *ready_fn = nullptr;
    void *user_data = nullptr;
};

struct Strategy {
    aws_retry_strategy base;
    aws_event_loop_group *elg = nullptr;
    RetrySettings settings;
    // Concurrency limit under throttling. Guarded by mu.
    std::mutex mu;
    double limit = kNoLimit;
    uint64_t in_flight = 0;  // tokens granted and not yet released
    uint64_t last_decrease_ns = 0;
    bool success_since_decrease = true;  // a request succeeded since the limit last fell
    std::deque<Token *> waiting;         // tokens asked for while in_flight >= limit, in order
};

bool take_slot_or_wait(Token *t);

void run_task(aws_task *, void *arg, aws_task_status status) {
    auto *t = static_cast<Token *>(arg);
    int error = status == AWS_TASK_STATUS_RUN_READY ? AWS_ERROR_SUCCESS : AWS_ERROR_IO_OPERATION_CANCELLED;
    // A throttled retry whose backoff is over: it goes on now only if a slot is free, else it
    // queues behind the others and this task runs again when it is granted one.
    if (error == AWS_ERROR_SUCCESS && !take_slot_or_wait(t)) return;
    aws_retry_strategy_on_retry_token_acquired_fn *acquired = nullptr;
    aws_retry_strategy_on_retry_ready_fn *ready = nullptr;
    void *user_data = nullptr;
    {
        std::lock_guard<std::mutex> lock(t->mu);
        acquired = t->acquired_fn;
        ready = t->ready_fn;
        user_data = t->user_data;
        t->acquired_fn = nullptr;
        t->ready_fn = nullptr;
        t->user_data = nullptr;
    }
    if (acquired) {
        if (error == AWS_ERROR_SUCCESS) {
            acquired(&t->strategy->base, error, &t->base, user_data);  // the caller gets our first reference
        } else {
            aws_retry_strategy *strategy = &t->strategy->base;
            aws_retry_strategy_acquire(strategy);  // the token's release may drop the last one
            aws_retry_token_release(&t->base);
            acquired(strategy, error, nullptr, user_data);
            aws_retry_strategy_release(strategy);
        }
    } else if (ready) {
        ready(&t->base, error, user_data);
        aws_retry_token_release(&t->base);  // the reference schedule_retry took for this task
    }
}

void schedule(Token *t, uint64_t at_ns) {
    aws_task_init(&t->task, run_task, t, "s3torch_retry");
    if (at_ns == 0) aws_event_loop_schedule_task_now(t->loop, &t->task);
    else aws_event_loop_schedule_task_future(t->loop, &t->task, at_ns);
}

// Grant waiting tokens while the limit allows. Caller holds s->mu; the tasks run later.
void grant_waiting_locked(Strategy *s) {
    while (!s->waiting.empty() && static_cast<double>(s->in_flight) < s->limit) {
        Token *t = s->waiting.front();
        s->waiting.pop_front();
        t->counted = true;
        ++s->in_flight;
        schedule(t, 0);
    }
}

// For a token that gave its slot back: take one if the limit allows and nobody waits, else join
// the queue. True if the token may go on now.
bool take_slot_or_wait(Token *t) {
    Strategy *s = t->strategy;
    std::lock_guard<std::mutex> lock(s->mu);
    if (!t->needs_token) return true;
    t->needs_token = false;
    if (static_cast<double>(s->in_flight) < s->limit && s->waiting.empty()) {
        t->counted = true;
        ++s->in_flight;
        return true;
    }
    s->waiting.push_back(t);  // grant_waiting_locked() schedules this task again
    return false;
}

void strategy_destroy(aws_retry_strategy *base) {
    auto *s = static_cast<Strategy *>(base->impl);
    aws_event_loop_group_release(s->elg);
    aws_allocator *alloc = base->allocator;
    s->~Strategy();
    aws_mem_release(alloc, s);
}

int acquire_token(aws_retry_strategy *base, const aws_byte_cursor *, aws_retry_strategy_on_retry_token_acquired_fn *fn,
                  void *user_data, uint64_t) {
    auto *s = static_cast<Strategy *>(base->impl);
    void *mem = aws_mem_calloc(base->allocator, 1, sizeof(Token));
    if (!mem) return AWS_OP_ERR;
    auto *t = new (mem) Token();
    t->base.allocator = base->allocator;
    t->base.retry_strategy = base;
    t->base.impl = t;
    aws_atomic_init_int(&t->base.ref_count, 1);
    aws_retry_strategy_acquire(base);
    t->strategy = s;
    t->loop = aws_event_loop_group_get_next_loop(s->elg);
    t->created_ns = monotonic_ns();
    t->acquired_fn = fn;
    t->user_data = user_data;
    std::lock_guard<std::mutex> lock(s->mu);
    if (static_cast<double>(s->in_flight) < s->limit && s->waiting.empty()) {
        t->counted = true;
        ++s->in_flight;
        schedule(t, 0);
    } else {
        s->waiting.push_back(t);
    }
    return AWS_OP_SUCCESS;
}

uint64_t backoff_ns(uint32_t retries, bool throttled) {
    uint64_t base = throttled ? kThrottleBackoffBaseMs : kBackoffBaseMs;
    uint64_t cap = base << std::min<uint32_t>(retries, 20);
    cap = std::min(cap, throttled ? kMaxThrottleBackoffMs : kMaxBackoffMs) * kNsPerMs;
    uint64_t r = 0;
    aws_device_random_u64(&r);
    return cap ? r % cap : 0;
}

int schedule_retry(aws_retry_token *base, aws_retry_error_type type, aws_retry_strategy_on_retry_ready_fn *fn,
                   void *user_data) {
    auto *t = static_cast<Token *>(base->impl);
    Strategy *s = t->strategy;
    EndpointHealth &health = *s->settings.health;
    uint64_t now = monotonic_ns();
    if (type == AWS_RETRY_ERROR_TYPE_SERVER_ERROR || type == AWS_RETRY_ERROR_TYPE_THROTTLING)
        health.reached.store(true);

    // A refused TLS handshake is not transient: trying again only waits out s2n's delay again.
    if (health.tls_refused.load()) return aws_raise_error(AWS_IO_MAX_RETRIES_EXCEEDED);
    uint64_t deadline = 0;
    if (type != AWS_RETRY_ERROR_TYPE_CLIENT_ERROR) {
        deadline = retry_deadline_ns(s->settings, t->created_ns);
        bool out_of_attempts = t->attempts >= s->settings.max_attempts;
        bool give_up = deadline ? now >= deadline : out_of_attempts;
        if (!health.reached.load() && s->settings.retry_timeout_ms == 0) give_up = give_up || out_of_attempts;
        if (give_up) return aws_raise_error(AWS_IO_MAX_RETRIES_EXCEEDED);
    }
    bool throttled = type == AWS_RETRY_ERROR_TYPE_THROTTLING;
    if (throttled) {
        std::lock_guard<std::mutex> lock(s->mu);
        // Halve the limit on every SlowDown while nothing succeeds (a persistent throttle
        // brings it to the floor within one burst); else at most once per kDecreaseSpacingNs
        // (a burst of 503s from requests in flight together is one signal, not fifty).
        if (!s->success_since_decrease || now - s->last_decrease_ns >= kDecreaseSpacingNs) {
            s->limit = std::max(kMinLimit, std::min(s->limit, static_cast<double>(s->in_flight)) / 2.0);
            s->last_decrease_ns = now;
            s->success_since_decrease = false;
        }
        // Over the limit: give the slot back, and after the backoff wait for one like a new
        // request, so that retries too are bounded by the limit.
        if (t->counted && static_cast<double>(s->in_flight) > s->limit) {
            t->counted = false;
            --s->in_flight;
            t->needs_token = true;
            grant_waiting_locked(s);
        }
    }
    uint64_t delay = type == AWS_RETRY_ERROR_TYPE_CLIENT_ERROR ? 0 : backoff_ns(t->attempts - 1, throttled);
    // The last attempt goes at the deadline, not a backoff past it: the time to the error is
    // the budget, not the budget plus a backoff.
    if (deadline && now + delay > deadline) delay = deadline > now ? deadline - now : 0;
    ++t->attempts;
    {
        std::lock_guard<std::mutex> lock(t->mu);
        if (t->user_data || t->acquired_fn || t->ready_fn) return aws_raise_error(AWS_ERROR_INVALID_STATE);
        t->ready_fn = fn;
        t->user_data = user_data;
    }
    aws_retry_token_acquire(base);  // held by the task until it runs
    uint64_t at = 0;
    if (delay) {
        aws_event_loop_current_clock_time(t->loop, &at);
        at += delay;
    }
    schedule(t, at);
    return AWS_OP_SUCCESS;
}

int record_success(aws_retry_token *base) {
    auto *t = static_cast<Token *>(base->impl);
    Strategy *s = t->strategy;
    s->settings.health->reached.store(true);  // (Transfer's telemetry ends the failure streak)
    std::lock_guard<std::mutex> lock(s->mu);
    s->success_since_decrease = true;
    if (s->limit < kNoLimit) {
        s->limit += 1.0;
        if (s->limit >= kLiftLimit) s->limit = kNoLimit;
        grant_waiting_locked(s);
    }
    return AWS_OP_SUCCESS;
}

void release_token(aws_retry_token *base) {
    auto *t = static_cast<Token *>(base->impl);
    Strategy *s = t->strategy;
    {
        std::lock_guard<std::mutex> lock(s->mu);
        if (t->counted) --s->in_flight;
        grant_waiting_locked(s);
    }
    aws_allocator *alloc = base->allocator;
    t->~Token();
    aws_mem_release(alloc, t);
    aws_retry_strategy_release(&s->base);
}

aws_retry_strategy_vtable g_vtable = {
    strategy_destroy, acquire_token, schedule_retry, record_success, release_token,
};

}  // namespace

uint64_t unanswered_ms(uint32_t stall_timeout_s) {
    const uint64_t stall_ms = uint64_t{stall_timeout_s} * 1000;
    return stall_timeout_s > ClientConfig{}.stall_timeout_s ? std::max(stall_ms, kUnansweredMs) : kUnansweredMs;
}

uint64_t retry_deadline_ns(const RetrySettings &settings, uint64_t issued_ns) {
    if (!settings.health->reached.load()) return issued_ns + kUnreachedBudgetMs * kNsPerMs;
    if (settings.retry_timeout_ms == 0) return 0;
    return settings.health->budget_start(issued_ns) + settings.retry_timeout_ms * kNsPerMs;
}

aws_retry_strategy *new_retry_strategy(aws_allocator *alloc, aws_event_loop_group *elg, const RetrySettings &settings) {
    void *mem = aws_mem_calloc(alloc, 1, sizeof(Strategy));
    if (!mem) return nullptr;
    auto *s = new (mem) Strategy();
    s->base.allocator = alloc;
    s->base.vtable = &g_vtable;
    s->base.impl = s;
    aws_atomic_init_int(&s->base.ref_count, 1);
    s->elg = aws_event_loop_group_acquire(elg);
    s->settings = settings;
    return &s->base;
}

uint64_t retry_strategy_concurrency_limit(aws_retry_strategy *base) {
    if (!base || base->vtable != &g_vtable) return 0;
    auto *s = static_cast<Strategy *>(base->impl);
    std::lock_guard<std::mutex> lock(s->mu);
    return s->limit >= kNoLimit ? 0 : static_cast<uint64_t>(s->limit);
}

}  // namespace s3torch
