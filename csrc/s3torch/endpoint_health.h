// EndpointHealth: what this process knows about one endpoint ("scheme://authority"), shared by
// every Client of it and by their retry strategies (retry.h). The one place that decides how
// long a failing request may keep retrying, and that says so while it does.
//
// - `reached`: the endpoint is known to be right. Set when it answers (any HTTP response, to any
//   client of the process), when a pickled s3torch object from a process where it had answered
//   arrives here (`mark_answered`, from Python), or by configuration (`known_endpoint`). Until
//   then failures give up fast: a wrong endpoint, a server not running, DNS.
// - `failing_since_ns`: when the current streak of failed attempts began (0: the last attempt
//   succeeded). A request's retry budget runs from the earlier of its own start and the
//   streak's start, so requests issued later during a persistent fault (the next wave of a load,
//   a HEAD after a GET) do not each start a fresh budget: the time to the error is one budget.
// - Reporting: failed attempts of transfers are recorded here (who, what, the last error, until
//   when they may retry); `take_reports()` returns the lines due now (one after a request has
//   retried for kReportAfterMs, then at most one per kReportEveryMs, and one when requests
//   succeed again). The binding logs them from a Python thread that waits on a transfer; no
//   Python runs on CRT threads.
//
// Threads: CRT event-loop threads (attempt outcomes, retry decisions) and caller threads
// (reports, pickling). Atomics for the flags read on every retry decision; `mu` for the rest.
#pragma once

#include "s3torch/errors.h"

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace s3torch {

constexpr uint64_t kReportAfterMs = 10000;  // first WARNING once a request has retried this long
constexpr uint64_t kReportEveryMs = 15000;  // then at most one line per this long per endpoint
// Failures further apart than this are separate streaks (longer than any backoff, so a
// persistent fault is one streak; an old failure never shortens a new request's budget).
constexpr uint64_t kStreakGapMs = 15000;

class EndpointHealth {
  public:
    explicit EndpointHealth(std::string name) : name_(std::move(name)) {}

    const std::string &name() const { return name_; }

    std::atomic<bool> reached{false};
    // The last TLS handshake with the endpoint failed in a way no retry mends (its certificate
    // is not trusted or names another host, no protocol in common): set and cleared by each
    // handshake's result (Client's TLS callback). Requests are not retried while it is set, and
    // their errors say why (else each retry would wait out s2n's 10-30 s failure delay).
    std::atomic<bool> tls_refused{false};
    std::atomic<uint64_t> failing_since_ns{0};
    std::atomic<uint64_t> last_failure_ns{0};

    // An attempt got an answer that is not a retryable failure: ends a streak. Runs on every
    // such attempt: takes no lock unless a warning is waiting for its recovery line.
    void attempt_succeeded();
    // A retryable failure of `who`'s attempt (a transfer): starts a streak if none, and records
    // what is retrying for the reports. `deadline_ns`: when it will give up at the latest.
    void attempt_failed(const void *who, const ErrorContext &ctx, const std::string &error, uint64_t deadline_ns);
    // `who` finished (succeeded, or gave up): it no longer retries.
    void transfer_finished(const void *who, bool ok);

    // The start of a request's retry budget: its own start, or the streak's if that is earlier.
    uint64_t budget_start(uint64_t issued_ns) const;

    // Lines due now (appends to `out`).
    void take_reports(uint64_t now_ns, std::vector<std::string> &out);
    // "" when nothing retries, else a short status for progress bars ("retrying 12 s: SlowDown").
    std::string retry_status(uint64_t now_ns);

  private:
    struct Retrying {
        ErrorContext ctx;
        std::string error;
        uint64_t first_failure_ns = 0;
        uint64_t deadline_ns = 0;
    };
    const Retrying *oldest_locked() const;  // the one retrying longest; retrying_ not empty

    const std::string name_;
    std::mutex mu_;  // guards the fields below
    std::map<const void *, Retrying> retrying_;
    uint64_t last_report_ns_ = 0;
    uint64_t warned_since_ns_ = 0;  // a WARNING was logged and no recovery line since (0: none)
    bool recovered_ = false;        // an attempt succeeded since the last WARNING
};

// The health of `endpoint` ("scheme://authority") in this process, created on first use.
std::shared_ptr<EndpointHealth> endpoint_health(const std::string &endpoint);

// Every endpoint that has answered in this process (for pickles), and marking some as answered
// (from a pickle made in a process where they had).
std::vector<std::string> answered_endpoints();
void mark_answered(const std::vector<std::string> &endpoints);

// Report lines due now across all endpoints; cheap when nothing is retrying.
std::vector<std::string> take_retry_reports();
// A short status of what retries now, "" if nothing (for progress bars).
std::string retry_status();

uint64_t monotonic_ns();

}  // namespace s3torch
