// The retry strategy of every aws_s3_client s3torch builds: which failed requests are tried
// again, when, and how many requests may be in flight while the server throttles.
//
// aws-c-s3 asks a retry strategy for a token before a request's first attempt, asks it to
// schedule each retry of a request that failed in a retryable way (a connection error, a 5xx,
// SlowDown, a truncated body; never a 4xx), and releases the token when the request is done.
// The CRT's own strategies share one token bucket among all requests, so when many requests
// fail together (an outage) the bucket empties and every request gives up within a second,
// whatever max_attempts says. This strategy has no shared bucket; each request decides alone:
//
// - Until the endpoint has answered once (any HTTP response, or a request that succeeded), a
//   failing request gives up after max_attempts attempts or kUnreachedBudgetMs, whichever comes
//   first: a wrong endpoint, a server that is not running, DNS failures fail in seconds.
// - Once it has answered, a request keeps retrying until retry_timeout_ms has passed since it
//   was issued (time spent waiting for a slot under throttling included), so an outage
//   (connections refused or reset), a throttling storm or a run of 5xx is ridden out for that
//   long; with retry_timeout_ms 0, until it has made max_attempts attempts.
// - Backoff is exponential with full jitter, from kBackoffBaseMs up to kMaxBackoffMs.
// - Throttling (503/SlowDown) also lowers how many requests may hold a token at once
//   (additive increase, multiplicative decrease): new requests wait for a token instead of
//   adding to the storm, and the limit grows back as requests succeed.
//
// Threads: the CRT calls these from its event-loop threads and from caller threads starting
// meta requests; every callback is delivered on an event loop, never from inside the call that
// asked for it (the contract of aws/io/retry_strategy.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

struct aws_allocator;
struct aws_event_loop_group;
struct aws_retry_strategy;

namespace s3torch {

struct RetrySettings {
    uint32_t max_attempts = 10;     // attempts per request, the first included
    uint64_t retry_timeout_ms = 0;  // how long a request keeps retrying, from when it is issued
    // Whether the endpoint has answered; shared with the Client, which also sets it.
    std::shared_ptr<std::atomic<bool>> reached = std::make_shared<std::atomic<bool>>(false);
};

constexpr uint64_t kBackoffBaseMs = 50;
constexpr uint64_t kMaxBackoffMs = 4000;
constexpr uint64_t kUnreachedBudgetMs = 4000;
// A transfer on a client whose endpoint has never answered is cancelled after this long
// without an answer (an endpoint that accepts connections and says nothing), Transfer::start.
constexpr uint64_t kUnansweredMs = 8000;

// A new strategy (reference count 1; release with aws_retry_strategy_release). Holds a
// reference to `elg`, whose loops run the callbacks.
aws_retry_strategy *new_retry_strategy(aws_allocator *alloc, aws_event_loop_group *elg, const RetrySettings &settings);

// The current limit on requests holding a token (0: none), for tests and logs.
uint64_t retry_strategy_concurrency_limit(aws_retry_strategy *strategy);

}  // namespace s3torch
