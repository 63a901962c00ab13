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
// - Until the endpoint is known to be right (EndpointHealth::reached: it answered here or in the
//   process that pickled the object, or the configuration says so), a failing request gives up
//   kUnreachedBudgetMs after it was issued (with retry_timeout_ms 0: after max_attempts
//   attempts, or that, whichever comes first): a wrong endpoint, a server that is not running,
//   DNS failures fail in under 10 s, and an outage of a few seconds is still ridden out.
// - Once it is known, a request keeps retrying until retry_timeout_ms has passed since its
//   budget started: when it was issued, or when the endpoint's current streak of failures
//   began if that is earlier (EndpointHealth::budget_start). So an outage (connections refused
//   or reset), a throttling storm or a run of 5xx is ridden out for that long, and under a
//   persistent fault every request, whenever issued, gives up by one budget after the first
//   failure. With retry_timeout_ms 0, until it has made max_attempts attempts.
// - Backoff is exponential with full jitter, from kBackoffBaseMs up to kMaxBackoffMs; after a
//   SlowDown, from kThrottleBackoffBaseMs up to kMaxThrottleBackoffMs.
// - Throttling (503/SlowDown) lowers how many requests may hold a token at once (additive
//   increase, multiplicative decrease; halved on every SlowDown while nothing succeeds, else at
//   most once per 250 ms), and a throttled request over the limit gives its token back and
//   waits for one like a new request: the client's total request rate falls, retries included.
//
// Threads: the CRT calls these from its event-loop threads and from caller threads starting
// meta requests; every callback is delivered on an event loop, never from inside the call that
// asked for it (the contract of aws/io/retry_strategy.h).
#pragma once

#include "s3torch/endpoint_health.h"

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
    // What the process knows of the endpoint; shared with every Client of it.
    std::shared_ptr<EndpointHealth> health = std::make_shared<EndpointHealth>("");
};

// When a request issued at `issued_ns` gives up at the latest; 0 when attempts decide.
uint64_t retry_deadline_ns(const RetrySettings &settings, uint64_t issued_ns);

constexpr uint64_t kBackoffBaseMs = 50;
constexpr uint64_t kMaxBackoffMs = 4000;
constexpr uint64_t kThrottleBackoffBaseMs = 500;
constexpr uint64_t kMaxThrottleBackoffMs = 10000;
constexpr uint64_t kUnreachedBudgetMs = 8000;
// A transfer on a client whose endpoint has never answered is cancelled after this long
// without an answer (an endpoint that accepts connections and says nothing), Transfer::start.
constexpr uint64_t kUnansweredMs = 8000;
// That wait for a client whose stall timeout is `stall_timeout_s`: kUnansweredMs, or the stall
// timeout where it was raised above its default (the user's word that the server may think
// that long before its first byte; docs/retries.md).
uint64_t unanswered_ms(uint32_t stall_timeout_s);

// A new strategy (reference count 1; release with aws_retry_strategy_release). Holds a
// reference to `elg`, whose loops run the callbacks.
aws_retry_strategy *new_retry_strategy(aws_allocator *alloc, aws_event_loop_group *elg, const RetrySettings &settings);

// The current limit on requests holding a token (0: none), for tests and logs.
uint64_t retry_strategy_concurrency_limit(aws_retry_strategy *strategy);

}  // namespace s3torch
