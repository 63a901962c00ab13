#include "s3torch/carried_credentials.h"

#include "s3torch/credentials.h"

#include <aws/auth/credentials.h>
#include <aws/common/clock.h>

#include <pthread.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace s3torch {

namespace {

// The CRT's cache asks again this long before credentials expire (aws-c-auth's
// REFRESH_CREDENTIALS_EARLY_DURATION_SECONDS); carried ones are not used past it either.
constexpr uint64_t kEarlyRefreshS = 5 * 60;
// Keys whose credentials are carried at once (shared_providers.cpp keeps 8 providers).
constexpr size_t kMaxCarried = 8;

aws_credentials *acquired(aws_credentials *c) {
    aws_credentials_acquire(c);
    return c;
}

uint64_t now_s() {
    uint64_t ns = 0;
    aws_sys_clock_get_ticks(&ns);
    return ns / 1000000000ull;
}

// Credentials (a reference of their own, or nullptr) and when they were fetched.
struct Held {
    aws_credentials *credentials = nullptr;
    uint64_t fetched_s = 0;

    void reset() {
        if (credentials) aws_credentials_release(credentials);
        credentials = nullptr;
    }
};

// Whether the CRT's cache would still hand `h` out at `now`: fetched less than
// kCredentialsRefreshMs ago, and not within kEarlyRefreshS of expiring.
bool fresh(const Held &h, uint64_t now) {
    if (!h.credentials || now >= h.fetched_s + kCredentialsRefreshMs / 1000) return false;
    const uint64_t expires = aws_credentials_get_expiration_timepoint_seconds(h.credentials);
    return expires == UINT64_MAX || now + kEarlyRefreshS < expires;
}

// What runtimes before this one carried, by key. Never destroyed (a static's destructor could
// run after the CRT's). Its lock is held over fork(), so that a child never starts with it taken.
struct Carried {
    std::mutex mu;
    std::vector<std::pair<std::string, Held>> entries;
};

Carried &carried() {
    static Carried *c = [] {
        auto *made = new Carried();
        pthread_atfork([] { carried().mu.lock(); }, [] { carried().mu.unlock(); }, [] { carried().mu.unlock(); });
        return made;
    }();
    return *c;
}

// The entry of `key` in the store, or its end. Caller holds c.mu.
auto find_locked(Carried &c, const std::string &key) {
    return std::find_if(c.entries.begin(), c.entries.end(), [&](const auto &e) { return e.first == key; });
}

// What was carried under `key` (taken out of the store), if still fresh.
Held take(const std::string &key) {
    Carried &c = carried();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = find_locked(c, key);
    if (it == c.entries.end()) return {};
    Held h = it->second;
    c.entries.erase(it);
    if (!fresh(h, now_s())) h.reset();
    return h;
}

}  // namespace

class RememberedCredentials {
  public:
    RememberedCredentials(aws_credentials_provider *source, std::string key, Held carried_in)
        : key_(std::move(key)), source_(source), last_(carried_in), carried_in_(carried_in.credentials != nullptr) {}
    ~RememberedCredentials() {
        last_.reset();
        aws_credentials_provider_release(source_);
    }
    RememberedCredentials(const RememberedCredentials &) = delete;
    RememberedCredentials &operator=(const RememberedCredentials &) = delete;

    const std::string &key() const { return key_; }
    aws_credentials_provider *source() const { return source_; }

    // The carried credentials (a new reference) while they are fresh; nullptr once they are not,
    // from then on.
    aws_credentials *carried_in() {
        std::lock_guard<std::mutex> lock(mu_);
        if (carried_in_ && !forgotten_ && fresh(last_, now_s())) return acquired(last_.credentials);
        carried_in_ = false;
        return nullptr;
    }

    // `credentials` were handed out. The CRT's cache answers with the same object until it
    // fetches again, so a new object is a new fetch.
    void handed_out(aws_credentials *credentials) {
        std::lock_guard<std::mutex> lock(mu_);
        if (forgotten_ || credentials == last_.credentials) return;
        last_.reset();
        last_ = {acquired(credentials), now_s()};
    }

    // A copy of what to carry (a new reference), or none.
    Held to_carry() const {
        std::lock_guard<std::mutex> lock(mu_);
        if (forgotten_ || !fresh(last_, now_s())) return {};
        return {acquired(last_.credentials), last_.fetched_s};
    }

    void forget() {
        std::lock_guard<std::mutex> lock(mu_);
        forgotten_ = true;
        last_.reset();
    }

  private:
    const std::string key_;
    aws_credentials_provider *const source_;
    mutable std::mutex mu_;  // guards the fields below
    Held last_;
    bool carried_in_;
    bool forgotten_ = false;
};

namespace {

using Memory = std::shared_ptr<RememberedCredentials>;

// One fetch through the source, from its asking to its answer.
struct Fetch {
    Memory memory;
    aws_on_get_credentials_callback_fn *callback;
    void *user_data;
};

void on_answer(aws_credentials *credentials, int error, void *user_data) {
    auto *f = static_cast<Fetch *>(user_data);
    if (credentials) f->memory->handed_out(credentials);
    f->callback(credentials, error, f->user_data);
    delete f;
}

int get_credentials(void *delegate_user_data, aws_on_get_credentials_callback_fn callback, void *user_data) {
    const Memory &memory = *static_cast<Memory *>(delegate_user_data);
    if (aws_credentials *carried = memory->carried_in()) {
        callback(carried, AWS_ERROR_SUCCESS, user_data);  // as the CRT's cache answers: at once
        aws_credentials_release(carried);
        return AWS_OP_SUCCESS;
    }
    auto *f = new Fetch{memory, callback, user_data};
    if (aws_credentials_provider_get_credentials(memory->source(), on_answer, f) != AWS_OP_SUCCESS) {
        const int error = aws_last_error();
        delete f;
        return aws_raise_error(error);
    }
    return AWS_OP_SUCCESS;
}

void on_delegate_gone(void *user_data) { delete static_cast<Memory *>(user_data); }

}  // namespace

aws_credentials_provider *remembering(aws_credentials_provider *source, const std::string &key, Memory *memory) {
    if (!source) return nullptr;
    auto *held = new Memory(std::make_shared<RememberedCredentials>(source, key, take(key)));
    aws_credentials_provider *p = new_delegate_provider(get_credentials, held, on_delegate_gone);
    if (!p) {
        delete held;  // no delegate to call on_delegate_gone; releases `source`
        return nullptr;
    }
    *memory = *held;
    return p;
}

void carry(const RememberedCredentials &memory) {
    Held h = memory.to_carry();
    if (!h.credentials) return;
    Carried &c = carried();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = find_locked(c, memory.key());
    if (it != c.entries.end()) {
        it->second.reset();
        it->second = h;
        return;
    }
    if (c.entries.size() >= kMaxCarried) {  // the least recently fetched goes
        auto oldest = std::min_element(c.entries.begin(), c.entries.end(), [](const auto &a, const auto &b) {
            return a.second.fetched_s < b.second.fetched_s;
        });
        oldest->second.reset();
        c.entries.erase(oldest);
    }
    c.entries.emplace_back(memory.key(), h);
}

void forget_refused(RememberedCredentials &memory) { memory.forget(); }

}  // namespace s3torch
