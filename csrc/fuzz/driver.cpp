// A standalone driver for a libFuzzer-style target, for compilers without libFuzzer (gcc):
// runs every seed file, then random mutations of the seeds (byte flips, inserts, deletes,
// splices, repeated chunks, interesting tokens) until the time budget is spent.
//
//   fuzz_responses_driver [-seconds=N] [-seed=S] SEED_DIR_OR_FILE...
//
// Prints one summary line; a crash is the sanitizer's report and a non-zero exit.
#include <dirent.h>
#include <sys/stat.h>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerInitialize(int *argc, char ***argv);
extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

namespace {

bool read_file(const std::string &path, std::string &out) {
    FILE *f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    std::fclose(f);
    return true;
}

void add_seeds(const std::string &path, std::vector<std::string> &seeds) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path.c_str());
        if (!d) return;
        while (dirent *e = readdir(d)) {
            if (e->d_name[0] == '.') continue;
            add_seeds(path + "/" + e->d_name, seeds);
        }
        closedir(d);
    } else {
        std::string s;
        if (read_file(path, s)) seeds.push_back(s);
    }
}

const char *const kTokens[] = {"<",
                               ">",
                               "</",
                               "/>",
                               "&lt;",
                               "&amp;",
                               "&#0;",
                               "&#x41;",
                               "&",
                               "<![CDATA[",
                               "]]>",
                               "<?xml ",
                               "<Size>",
                               "</Size>",
                               "-1",
                               "18446744073709551616",
                               "<Contents>",
                               "</Contents>",
                               "<Key>",
                               "</Key>",
                               "<Code>",
                               "</Code>",
                               "\"",
                               "<!--",
                               "-->",
                               "\xff\xfe",
                               "\0",
                               "<a b='c'>",
                               "9223372036854775808"};

std::string mutate(const std::vector<std::string> &seeds, std::mt19937_64 &rng) {
    std::string s = seeds[rng() % seeds.size()];
    int edits = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < edits; ++i) {
        size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
        switch (rng() % 7) {
            case 0:
                if (!s.empty()) s[pos % s.size()] ^= static_cast<char>(1u << (rng() % 8));
                break;
            case 1: s.insert(pos, 1, static_cast<char>(rng() & 0xff)); break;
            case 2:
                if (!s.empty()) s.erase(pos % s.size(), 1 + rng() % 16);
                break;
            case 3: {
                const char *t = kTokens[rng() % (sizeof kTokens / sizeof kTokens[0])];
                s.insert(pos, t, std::strlen(t) ? std::strlen(t) : 1);
                break;
            }
            case 4: {  // splice another seed
                const std::string &o = seeds[rng() % seeds.size()];
                if (!o.empty()) {
                    size_t a = rng() % o.size();
                    s.insert(pos, o.substr(a, rng() % (o.size() - a + 1)));
                }
                break;
            }
            case 5: {  // repeat a chunk (deep nesting, many elements)
                if (!s.empty()) {
                    size_t a = pos % s.size(), len = 1 + rng() % 32;
                    std::string chunk = s.substr(a, len);
                    int times = 1 + static_cast<int>(rng() % 64);
                    std::string rep;
                    for (int k = 0; k < times; ++k) rep += chunk;
                    s.insert(a, rep);
                }
                break;
            }
            default:
                if (!s.empty()) s.resize(rng() % (s.size() + 1));
        }
        if (s.size() > (1u << 16)) s.resize(1u << 16);
    }
    return s;
}

}  // namespace

int main(int argc, char **argv) {
    double seconds = 10;
    uint64_t seed = 0;
    std::vector<std::string> seeds;
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "-seconds=", 9) == 0) seconds = std::atof(argv[i] + 9);
        else if (std::strncmp(argv[i], "-seed=", 6) == 0) seed = std::strtoull(argv[i] + 6, nullptr, 10);
        else if (argv[i][0] != '-') add_seeds(argv[i], seeds);
    }
    LLVMFuzzerInitialize(&argc, &argv);
    if (seeds.empty()) seeds.push_back("");
    for (const auto &s : seeds) LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t *>(s.data()), s.size());
    std::mt19937_64 rng(seed ? seed : static_cast<uint64_t>(std::random_device{}()));
    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    uint64_t runs = 0;
    while (std::chrono::steady_clock::now() < end) {
        for (int k = 0; k < 64; ++k, ++runs) {
            std::string s = mutate(seeds, rng);
            LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t *>(s.data()), s.size());
        }
    }
    std::printf("s3torch fuzz driver: %zu seeds, %llu mutated inputs in %.0f s, no crash\n", seeds.size(),
                static_cast<unsigned long long>(runs), seconds);
    return 0;
}
