#include "s3torch/endpoint_health.h"

#include <aws/common/clock.h>

#include <algorithm>

namespace s3torch {

namespace {

constexpr uint64_t kNsPerMs = 1000000ull;

std::mutex g_mu;  // guards g_endpoints
std::map<std::string, std::shared_ptr<EndpointHealth>> g_endpoints;
// How many transfers are recorded as retrying, plus endpoints with a recovery line to give:
// take_retry_reports() returns at once while it is 0 (it runs on every wait slice).
std::atomic<int64_t> g_attention{0};

std::string seconds(uint64_t ns) { return std::to_string((ns + 500 * kNsPerMs) / (1000 * kNsPerMs)) + " s"; }

std::vector<std::shared_ptr<EndpointHealth>> all_endpoints() {
    std::lock_guard<std::mutex> lock(g_mu);
    std::vector<std::shared_ptr<EndpointHealth>> out;
    for (auto &kv : g_endpoints) out.push_back(kv.second);
    return out;
}

}  // namespace

uint64_t monotonic_ns() {
    uint64_t t = 0;
    aws_high_res_clock_get_ticks(&t);
    return t;
}

void EndpointHealth::attempt_succeeded() {
    if (failing_since_ns.load(std::memory_order_relaxed) != 0) failing_since_ns.store(0);
    // A warning without its recovery line keeps g_attention above 0 (an entry retrying, or
    // recovered_ counted): with nothing to report anywhere, there is nothing to do here.
    if (g_attention.load(std::memory_order_relaxed) <= 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (warned_since_ns_ && !recovered_) {
        recovered_ = true;
        ++g_attention;
    }
}

void EndpointHealth::attempt_failed(const void *who, const ErrorContext &ctx, const std::string &error,
                                    uint64_t deadline_ns) {
    uint64_t now = monotonic_ns();
    uint64_t last = last_failure_ns.exchange(now);
    uint64_t since = failing_since_ns.load();
    if (since == 0 || now - last > kStreakGapMs * kNsPerMs) failing_since_ns.store(now);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = retrying_.find(who);
    if (it == retrying_.end()) {
        it = retrying_.emplace(who, Retrying{ctx, error, now, deadline_ns}).first;
        ++g_attention;
    }
    it->second.error = error;
    it->second.deadline_ns = deadline_ns;
}

void EndpointHealth::transfer_finished(const void *who, bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    if (retrying_.erase(who)) --g_attention;
    if (ok && warned_since_ns_ && !recovered_) {
        recovered_ = true;
        ++g_attention;
    }
    if (!ok && retrying_.empty() && warned_since_ns_) {
        // The last retrying request gave up: its error reaches the caller; nothing recovered.
        if (recovered_) --g_attention;
        warned_since_ns_ = 0;
        recovered_ = false;
    }
}

uint64_t EndpointHealth::budget_start(uint64_t issued_ns) const {
    uint64_t streak = failing_since_ns.load();
    if (streak == 0 || streak >= issued_ns) return issued_ns;
    if (monotonic_ns() - last_failure_ns.load() > kStreakGapMs * kNsPerMs) return issued_ns;  // an old streak
    return streak;
}

void EndpointHealth::take_reports(uint64_t now, std::vector<std::string> &out) {
    std::lock_guard<std::mutex> lock(mu_);
    if (recovered_ && retrying_.empty()) {
        out.push_back("requests to " + name_ + " succeed again, after " + seconds(now - warned_since_ns_) +
                      " of retrying since the first warning");
        warned_since_ns_ = 0;
        recovered_ = false;
        --g_attention;
        return;
    }
    if (retrying_.empty()) return;
    const Retrying *oldest = oldest_locked();
    uint64_t latest_deadline = 0;
    for (auto &kv : retrying_) latest_deadline = std::max(latest_deadline, kv.second.deadline_ns);
    uint64_t retried = now - oldest->first_failure_ns;
    if (retried < kReportAfterMs * kNsPerMs) return;
    if (last_report_ns_ && now - last_report_ns_ < kReportEveryMs * kNsPerMs) return;
    last_report_ns_ = now;
    if (!warned_since_ns_) warned_since_ns_ = now;
    if (recovered_) {
        recovered_ = false;  // some succeeded, others still retry: this line says so
        --g_attention;
    }
    std::string line =
        describe(oldest->ctx) + " has been retrying for " + seconds(retried) + " (last error: " + oldest->error + ")";
    if (retrying_.size() > 1) line += "; " + std::to_string(retrying_.size()) + " requests to " + name_ + " retrying";
    if (latest_deadline > now) line += "; giving up in at most " + seconds(latest_deadline - now);
    else if (latest_deadline == 0) line += "; giving up after max_attempts";
    out.push_back(printable(line));  // it names an object and its last error: outside text (errors.h)
}

std::string EndpointHealth::retry_status(uint64_t now) {
    std::lock_guard<std::mutex> lock(mu_);
    if (retrying_.empty()) return "";
    const Retrying *oldest = oldest_locked();
    return printable("retrying " + seconds(now - oldest->first_failure_ns) + ": " + oldest->error);
}

const EndpointHealth::Retrying *EndpointHealth::oldest_locked() const {
    const Retrying *oldest = nullptr;
    for (auto &kv : retrying_)
        if (!oldest || kv.second.first_failure_ns < oldest->first_failure_ns) oldest = &kv.second;
    return oldest;
}

std::shared_ptr<EndpointHealth> endpoint_health(const std::string &endpoint) {
    std::lock_guard<std::mutex> lock(g_mu);
    auto &h = g_endpoints[endpoint];
    if (!h) h = std::make_shared<EndpointHealth>(endpoint);
    return h;
}

std::vector<std::string> answered_endpoints() {
    std::vector<std::string> out;
    for (auto &h : all_endpoints())
        if (h->reached.load()) out.push_back(h->name());
    return out;
}

void mark_answered(const std::vector<std::string> &endpoints) {
    for (const std::string &e : endpoints) endpoint_health(e)->reached.store(true);
}

std::vector<std::string> take_retry_reports() {
    std::vector<std::string> out;
    if (g_attention.load(std::memory_order_relaxed) <= 0) return out;
    uint64_t now = monotonic_ns();
    for (auto &h : all_endpoints()) h->take_reports(now, out);
    return out;
}

std::string retry_status() {
    if (g_attention.load(std::memory_order_relaxed) <= 0) return "";
    uint64_t now = monotonic_ns();
    for (auto &h : all_endpoints()) {
        std::string s = h->retry_status(now);
        if (!s.empty()) return s;
    }
    return "";
}

}  // namespace s3torch
