// Faulting in memory ahead of its first write: the staging ring's fresh slots are made
// resident on the thread that allocates them, while the first GETs are in flight, instead of
// page by page inside the event-loop thread whose socket reads land in them.
#pragma once

#include <cstddef>

namespace s3torch {

// Make every page of [data, data + len) resident and writable now (MADV_POPULATE_WRITE,
// Linux 5.14+; elsewhere a read and write back of one byte per page). Contents are unchanged,
// but the fallback writes: only for memory no other thread is using yet. Returns false when
// nothing was done (an empty range; the fallback never fails).
bool prefault(void *data, size_t len);

}  // namespace s3torch
