// The process-wide CRT runtime: library init, event loop group, host resolver, bootstrap.
//
// Created lazily on first use and owned by this module. It belongs to the process that
// created it: CRT threads do not survive fork(), so `shutdown()` (called before fork by the
// bindings' at-fork hook, after every client has released its aws_s3_client) tears it down
// and joins every CRT-managed thread; the next `acquire()`, in parent or child, builds a
// fresh one. A runtime inherited by a child without that teardown is abandoned, never used,
// and the CRT's bookkeeping of the parent's threads is reset in the child.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

struct aws_allocator;
struct aws_event_loop_group;
struct aws_host_resolver;
struct aws_client_bootstrap;

namespace s3torch {

class SharedProviders;

// How many event-loop threads the runtime runs: S3TORCH_EVENT_LOOP_THREADS (1-256) if set,
// else half the cores (aws-c-io's default: one a physical core) but at least two on a machine
// with two cores or more. With aws-c-io's one on 2 cores, that thread was the bound of GETs
// into memory (benchmarks/results/event-loops/: 20-50% faster at the same CPU; a process's
// first safetensors load into fresh tensors 5-29% slower in six of seven pairs). Throws
// S3InvalidArgumentError for a malformed variable.
uint16_t event_loop_threads();

// Initialise the CRT's libraries (and its logging, S3TORCH_CRT_LOG) once per process; starts
// no thread. Runtime::acquire() does it; so does what uses the CRT without a runtime (the
// shared config file's parser).
void init_crt_libraries();

class Runtime {
  public:
    // The runtime of this process, created on first call. Thread-safe.
    static std::shared_ptr<Runtime> acquire();
    // Tear down the current runtime if nothing else holds it (after waiting, a bounded time, for
    // clients still shutting down to let go), and join all CRT threads. Returns false if a
    // client still holds it (the caller left it running). In a fork()ed child holding a
    // runtime inherited from its parent, abandons that one and returns true.
    static bool shutdown();
    // Drop a reference to the runtime that a client held past its own lifetime (the CRT's
    // shutdown callback of its aws_s3_client), waking a shutdown() that waits for it.
    static void release(std::shared_ptr<Runtime> &&runtime);

    ~Runtime();
    Runtime(const Runtime &) = delete;
    Runtime &operator=(const Runtime &) = delete;

    aws_allocator *allocator() const { return allocator_; }
    aws_client_bootstrap *bootstrap() const { return bootstrap_; }
    aws_event_loop_group *event_loop_group() const { return elg_; }
    // The TLS contexts and credentials providers its clients share (shared_providers.h).
    SharedProviders &providers() const { return *providers_; }

  private:
    Runtime();
    aws_allocator *allocator_;
    aws_event_loop_group *elg_ = nullptr;
    aws_host_resolver *resolver_ = nullptr;
    aws_client_bootstrap *bootstrap_ = nullptr;
    std::unique_ptr<SharedProviders> providers_;  // released before the bootstrap they use
};

}  // namespace s3torch
