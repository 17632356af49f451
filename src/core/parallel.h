// Data-parallel loops over the machine's cores. OpenMP underneath: one place to change the threading model.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace dsv4 {

inline int num_threads() { return omp_get_max_threads(); }

// Calls fn(begin, end) on contiguous chunks of [0, n) from all threads. grain = smallest chunk worth a thread.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  int nt = omp_get_max_threads();
  if (nt <= 1 || n <= grain || omp_in_parallel()) {
    fn(int64_t(0), n);
    return;
  }
  int64_t chunks = std::min<int64_t>(n / std::max<int64_t>(grain, 1), int64_t(nt) * 4);
  if (chunks < 2) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    if (b < e) fn(b, e);
  }
}

}  // namespace dsv4
