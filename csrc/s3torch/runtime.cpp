#include "s3torch/runtime.h"

#include "s3torch/crt_compat.h"
#include "s3torch/errors.h"
#include "s3torch/fork.h"
#include "s3torch/log_redact.h"
#include "s3torch/prefault.h"
#include "s3torch/shared_providers.h"

#include <aws/auth/auth.h>
#include <aws/common/logging.h>
#include <aws/common/system_info.h>
#include <aws/common/thread.h>
#include <aws/io/channel.h>
#include <aws/io/channel_bootstrap.h>
#include <aws/io/event_loop.h>
#include <aws/io/host_resolver.h>
#include <aws/s3/s3.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace s3torch {

namespace {

// Channel messages (and so socket reads and writes) of 256 KiB instead of the CRT's 16 KiB:
// the same setting aws-crt-java uses. Measured on a 2-core machine against a local server:
// about 25% less CPU per GB for both GET and PUT.
constexpr size_t kChannelMessageBytes = 256 * 1024;
// Host names the resolver caches (a process talks to a handful of endpoints).
constexpr size_t kHostResolverEntries = 64;
// How long shutdown() waits for clients released without waiting (a destructor) to let go of
// the runtime: the CRT shuts an aws_s3_client down in milliseconds.
constexpr std::chrono::seconds kClientShutdownWait{5};

// The most event-loop threads S3TORCH_EVENT_LOOP_THREADS may ask for.
constexpr unsigned long kMaxEventLoopThreads = 256;

// Guards g_runtime and g_owner; g_released is signalled (under it) whenever a reference to
// the runtime is dropped through Runtime::release. The runtime itself is immutable once built.
std::mutex g_mutex;
std::condition_variable g_released;
std::shared_ptr<Runtime> g_runtime;
ProcessOwner g_owner;  // the process that built g_runtime

// CRT logging for diagnosis: S3TORCH_CRT_LOG=error|warn|info|debug|trace, to
// $S3TORCH_CRT_LOG_FILE or stderr. Set once per process; off by default. Lines go through the
// redacting logger (log_redact.h): no session token reaches the log.
void init_logging(aws_allocator *alloc) {
    const char *level = std::getenv("S3TORCH_CRT_LOG");
    if (!level || !*level) return;
    static aws_logger standard;
    static aws_logger logger;
    aws_logger_standard_options opts;
    AWS_ZERO_STRUCT(opts);
    std::string l = level;
    opts.level = l == "trace"   ? AWS_LL_TRACE
                 : l == "debug" ? AWS_LL_DEBUG
                 : l == "info"  ? AWS_LL_INFO
                 : l == "warn"  ? AWS_LL_WARN
                                : AWS_LL_ERROR;
    const char *file = std::getenv("S3TORCH_CRT_LOG_FILE");
    opts.file = stderr;
    if (file && *file) {
        // Line-buffered, appended: what a crash or a kill leaves is every line up to it (the
        // CRT's own fopen buffers 4 KiB: exactly the lines a diagnosis needs were lost).
        static FILE *log_file = std::fopen(file, "a");
        if (log_file) {
            std::setvbuf(log_file, nullptr, _IOLBF, 0);
            opts.file = log_file;
        } else {
            opts.file = nullptr;
            opts.filename = file;  // the CRT's open fails too, and says why
        }
    }
    if (aws_logger_init_standard(&standard, alloc, &opts) == AWS_OP_SUCCESS) {
        init_redacting_logger(&logger, &standard, alloc);
        aws_logger_set(&logger);
    }
}

// A runtime inherited across fork() without a teardown (transfers were in flight in the
// parent): its threads do not exist here. Abandon it, never touching or freeing it, and make
// aws-c-common forget the parent's threads. Called with g_mutex held, in the child, before
// any CRT thread exists here.
void abandon_inherited_runtime_locked() {
    new std::shared_ptr<Runtime>(std::move(g_runtime));
    g_runtime.reset();
    crt_compat::forget_inherited_threads();
}

}  // namespace

uint16_t event_loop_threads() {
    const char *want = std::getenv("S3TORCH_EVENT_LOOP_THREADS");
    if (want && *want) {
        char *end = nullptr;
        errno = 0;
        const unsigned long n = std::strtoul(want, &end, 10);
        if (errno != 0 || *end != '\0' || *want == '-' || n < 1 || n > kMaxEventLoopThreads)
            throw_invalid("S3TORCH_EVENT_LOOP_THREADS must be a whole number from 1 to " +
                          std::to_string(kMaxEventLoopThreads) + ", got '" + want + "'");
        return static_cast<uint16_t>(n);
    }
    const size_t cores = aws_system_info_processor_count();
    return static_cast<uint16_t>(
        std::min<size_t>(kMaxEventLoopThreads, std::max<size_t>(cores >= 2 ? 2 : 1, cores / 2)));
}

void init_crt_libraries() {
    static std::once_flag once;
    std::call_once(once, [] {
        aws_allocator *alloc = aws_default_allocator();
        aws_s3_library_init(alloc);
        init_logging(alloc);
        crt_compat::set_channel_max_fragment_size(kChannelMessageBytes);
    });
}

Runtime::Runtime() : allocator_(aws_default_allocator()) {
    init_crt_libraries();
    huge_pages_enabled();  // a malformed S3TORCH_HUGE_PAGES is refused here, by name (prefault.h)
    elg_ = aws_event_loop_group_new_default(allocator_, event_loop_threads(), nullptr);
    if (!elg_) throw error_from_crt(aws_last_error(), {"CreateEventLoopGroup", "", ""});
    aws_host_resolver_default_options resolver_options;
    AWS_ZERO_STRUCT(resolver_options);
    resolver_options.el_group = elg_;
    resolver_options.max_entries = kHostResolverEntries;
    resolver_ = aws_host_resolver_new_default(allocator_, &resolver_options);
    if (!resolver_) throw error_from_crt(aws_last_error(), {"CreateHostResolver", "", ""});
    aws_client_bootstrap_options bootstrap_options;
    AWS_ZERO_STRUCT(bootstrap_options);
    bootstrap_options.event_loop_group = elg_;
    bootstrap_options.host_resolver = resolver_;
    bootstrap_ = aws_client_bootstrap_new(allocator_, &bootstrap_options);
    if (!bootstrap_) throw error_from_crt(aws_last_error(), {"CreateBootstrap", "", ""});
    providers_.reset(new SharedProviders(bootstrap_));
}

Runtime::~Runtime() {
    providers_.reset();
    aws_client_bootstrap_release(bootstrap_);
    aws_host_resolver_release(resolver_);
    aws_event_loop_group_release(elg_);
}

std::shared_ptr<Runtime> Runtime::acquire() {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_runtime && g_owner.foreign()) abandon_inherited_runtime_locked();
    if (!g_runtime) {
        g_runtime.reset(new Runtime());
        g_owner = ProcessOwner();
    }
    return g_runtime;
}

bool Runtime::shutdown() {
    std::unique_lock<std::mutex> lock(g_mutex);
    if (!g_runtime) return true;
    if (g_owner.foreign()) {
        abandon_inherited_runtime_locked();
        return true;  // nothing of the CRT runs in this process
    }
    // Clients released without waiting (a destructor) hold the runtime until the CRT has shut
    // their aws_s3_client down: wait for those, up to a bound. Any other holder is a client
    // that was not suspended.
    if (!g_released.wait_for(lock, kClientShutdownWait, [] { return !g_runtime || g_runtime.use_count() == 1; }))
        return false;
    if (!g_runtime) return true;
    g_runtime.reset();
    lock.unlock();
    // Event loop threads stop asynchronously after the last release; wait for them.
    aws_thread_join_all_managed();
    return true;
}

void Runtime::release(std::shared_ptr<Runtime> &&runtime) {
    if (!runtime) return;
    std::lock_guard<std::mutex> lock(g_mutex);
    runtime.reset();  // never the last reference: g_runtime (or an abandoned copy) holds one
    g_released.notify_all();
}

}  // namespace s3torch
