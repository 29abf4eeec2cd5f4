// Reading a large weight as several concurrent memory streams, shared by the native linear kernels.
//
// Weight rows are read kStreams at a time, one from each of kStreams far-apart runs of consecutive rows, so each
// thread keeps kStreams long sequential memory streams going. That is what lets the hardware prefetchers reach
// the machine's bandwidth: adjacent rows read side by side (2-6 KB apart) looked like one or two streams and
// got ~60 % of it (int8 kernel, A/B on the stt-1b layer shapes, batch 1, 2 threads: 38 -> 31 ms, bit-identical
// output; a read-only loop: 22-24 GB/s with one stream per thread, 37-38 GB/s with 8).
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace dsm {

constexpr int64_t kStreams = 8;

// Rows [0, N) on at::parallel_for threads, `grain` rows per task at least. Each task splits its rows into
// kStreams runs of consecutive rows and calls visit(rows, kStreams) with one row from each run, run position by
// run position; the rows left over go one at a time, visit(&n, 1).
template <typename Visit>
inline void for_row_streams(int64_t N, int64_t grain, Visit&& visit) {
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    const int64_t run = (n1 - n0) / kStreams;
    int64_t rows[kStreams];
    for (int64_t i = 0; i < run; ++i) {
      for (int64_t j = 0; j < kStreams; ++j) rows[j] = n0 + j * run + i;
      visit(static_cast<const int64_t*>(rows), kStreams);
    }
    for (int64_t n = n0 + kStreams * run; n < n1; ++n) visit(static_cast<const int64_t*>(&n), int64_t{1});
  });
}

}  // namespace dsm
