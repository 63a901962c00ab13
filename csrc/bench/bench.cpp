// s3torch-bench: drive the C++ core directly (no Python) and report throughput and CPU cost.
//
//   s3torch-bench --endpoint http://127.0.0.1:8088 --bucket b --key k [--op get|put]
//                 [--size BYTES] [--concurrency N] [--repeat R] [--part-size BYTES]
//                 [--access-key K --secret-key S | --anonymous]
//
// get: N concurrent GETs of the object (or of `--size` bytes of it) into N preallocated
//      buffers, R times, through GetInto (the path of the library's get_into).
// put: N concurrent PUTs of `--size` bytes from memory to key.i, R times, through Upload's
//      put_begin (the path of the library's put(): one PutObject up to a part, else the
//      windowed multipart upload).
// Prints one JSON object: bytes, seconds, GB/s, CPU seconds (user+sys of this process) and
// CPU-s/GB.
#include "s3torch/client.h"
#include "s3torch/get.h"
#include "s3torch/objects.h"
#include "s3torch/put.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace s3torch;

namespace {

double cpu_seconds() {
    rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

constexpr int64_t kStepMs = 1;  // how long one upload's wait_step may block while others wait

[[noreturn]] void usage(const char *why) {
    std::fprintf(stderr, "s3torch-bench: %s\nsee the header of csrc/bench/bench.cpp for usage\n", why);
    std::exit(2);
}

}  // namespace

int main(int argc, char **argv) {
    ClientConfig cfg;
    std::string bucket, key, op = "get";
    uint64_t size = 0;
    int concurrency = 1, repeat = 1;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value for " + a).c_str());
            return argv[++i];
        };
        if (a == "--endpoint") cfg.endpoint = val();
        else if (a == "--region") cfg.region = val();
        else if (a == "--bucket") bucket = val();
        else if (a == "--key") key = val();
        else if (a == "--op") op = val();
        else if (a == "--size") size = std::strtoull(val().c_str(), nullptr, 10);
        else if (a == "--concurrency") concurrency = std::atoi(val().c_str());
        else if (a == "--repeat") repeat = std::atoi(val().c_str());
        else if (a == "--part-size") cfg.part_size = std::strtoull(val().c_str(), nullptr, 10);
        else if (a == "--throughput-gbps") cfg.throughput_target_gbps = std::atof(val().c_str());
        else if (a == "--anonymous") cfg.unsigned_requests = true;
        else if (a == "--access-key") cfg.access_key_id = val();
        else if (a == "--secret-key") cfg.secret_access_key = val();
        else if (a == "--path-style") cfg.force_path_style = true;
        else usage(("unknown argument " + a).c_str());
    }
    if (bucket.empty() || key.empty()) usage("--bucket and --key are required");
    if (concurrency < 1 || repeat < 1) usage("--concurrency and --repeat must be >= 1");
    try {
        auto client = Client::create(cfg);
        if (op == "get" && size == 0) size = head_object(client, bucket, key).size;
        if (size == 0) usage("--size is required for put (and must be > 0)");
        std::vector<std::vector<uint8_t>> bufs(concurrency, std::vector<uint8_t>(size));
        // Fault the pages in up front, with pseudo-random bytes: servers may store a constant
        // pattern faster (SeaweedFS does), which would flatter PUT against the Python rows.
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (auto &b : bufs) {
            for (size_t i = 0; i + 8 <= b.size(); i += 8) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift64
                std::memcpy(b.data() + i, &x, 8);
            }
            for (size_t i = b.size() & ~size_t(7); i < b.size(); ++i) b[i] = static_cast<uint8_t>(i);
        }
        double cpu0 = cpu_seconds();
        auto t0 = std::chrono::steady_clock::now();
        uint64_t total = 0;
        if (op != "get" && op != "put") usage("--op must be get or put");
        for (int r = 0; r < repeat; ++r) {
            if (op == "get") {
                std::vector<std::shared_ptr<GetInto>> gets;
                for (int c = 0; c < concurrency; ++c)
                    gets.push_back(GetInto::start_get(client, bucket, key, std::nullopt, bufs[c].data(), size));
                for (auto &g : gets) {
                    g->wait();
                    g->raise_if_failed();
                    total += g->bytes_received();
                }
            } else {
                std::vector<std::unique_ptr<Upload>> ups;
                for (int c = 0; c < concurrency; ++c) {
                    ups.push_back(
                        std::make_unique<Upload>(client, bucket, key + "." + std::to_string(c), PutOptions{}));
                    ups.back()->put_begin(bufs[c].data(), size);
                }
                // Each Upload hands its parts over as its window allows: step them in turn (one
                // alone just waits, as put() does).
                const int64_t step_ms = ups.size() == 1 ? -1 : kStepMs;
                for (size_t left = ups.size(); left > 0;) {
                    left = 0;
                    for (auto &u : ups)
                        if (!u->closed() && !u->wait_step(step_ms)) ++left;
                }
                total += size * ups.size();
            }
        }
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        double cpu = cpu_seconds() - cpu0;
        double gb = total / 1e9;
        std::printf(
            "{\"tool\": \"s3torch-bench\", \"op\": \"%s\", \"bytes\": %llu, \"concurrency\": %d, \"repeat\": %d, "
            "\"part_size\": %llu, \"seconds\": %.4f, \"gbps\": %.4f, \"cpu_seconds\": %.4f, \"cpu_s_per_gb\": %.4f}\n",
            op.c_str(), static_cast<unsigned long long>(total), concurrency, repeat,
            static_cast<unsigned long long>(cfg.part_size), secs, gb / secs, cpu, cpu / gb);
    } catch (const S3Error &e) {
        std::fprintf(stderr, "s3torch-bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
