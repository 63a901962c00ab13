#include "s3torch/block_cache.h"

#include <pthread.h>

#include <array>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace s3torch {

namespace {

struct Block {
    void *data;
    size_t size;
    size_t align;
};

struct Cache {
    std::mutex mu;
    std::vector<Block> blocks;  // oldest first
    size_t bytes = 0;
};

Cache &cache() {
    // Leaked: HostBuffers may be freed during interpreter shutdown, after static destructors.
    static Cache *c = [] {
        auto *made = new Cache();
        made->blocks.reserve(kBlockCacheBlocks + 1);
        pthread_atfork([] { cache().mu.lock(); }, [] { cache().mu.unlock(); }, [] { cache().mu.unlock(); });
        return made;
    }();
    return *c;
}

}  // namespace

void *take_block(size_t size, size_t align) {
    if (size >= kBlockCacheMinBytes) {
        Cache &c = cache();
        std::lock_guard<std::mutex> lock(c.mu);
        for (size_t i = c.blocks.size(); i-- > 0;) {  // the most recently kept first
            if (c.blocks[i].size == size && c.blocks[i].align == align) {
                void *p = c.blocks[i].data;
                c.blocks.erase(c.blocks.begin() + static_cast<std::ptrdiff_t>(i));
                c.bytes -= size;
                return p;
            }
        }
    }
    void *p = nullptr;
    if (posix_memalign(&p, align, size) != 0) return nullptr;
    return p;
}

void give_block(void *block, size_t size, size_t align) noexcept {
    if (block == nullptr) return;
    if (size < kBlockCacheMinBytes || size > kBlockCacheBytes) {
        std::free(block);
        return;
    }
    // Blocks that make room for this one (the oldest), freed outside the lock.
    std::array<void *, kBlockCacheBlocks + 1> drop{};
    size_t ndrop = 0;
    {
        Cache &c = cache();
        std::lock_guard<std::mutex> lock(c.mu);
        c.blocks.push_back(Block{block, size, align});  // capacity reserved: never allocates
        c.bytes += size;
        while (c.blocks.size() > kBlockCacheBlocks || c.bytes > kBlockCacheBytes) {
            drop[ndrop++] = c.blocks.front().data;
            c.bytes -= c.blocks.front().size;
            c.blocks.erase(c.blocks.begin());
        }
    }
    for (size_t i = 0; i < ndrop; ++i) std::free(drop[i]);
}

KeptBlocks kept_blocks() {
    Cache &c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    return KeptBlocks{c.blocks.size(), c.bytes};
}

void drop_kept_blocks() {
    // Taken out under the lock, freed outside it. clear() keeps the reserved capacity, so
    // give_block's push_back still never allocates.
    std::array<void *, kBlockCacheBlocks + 1> drop{};
    size_t ndrop = 0;
    {
        Cache &c = cache();
        std::lock_guard<std::mutex> lock(c.mu);
        for (const Block &b : c.blocks) drop[ndrop++] = b.data;
        c.blocks.clear();
        c.bytes = 0;
    }
    for (size_t i = 0; i < ndrop; ++i) std::free(drop[i]);
}

}  // namespace s3torch
