// The float32 product y [M, N] = x [M, K] @ w [N, K].T (+ bias) for a few rows of x against a large weight, shared
// by fp32_linear.cpp (Mimi's streaming linears and quantizer) and mimi_transformer.cpp (its fused transformer
// step). See fp32_linear.cpp for why it reads the weight this way and what its float order is.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "streams.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#define DSM_AVX512 1
#endif

namespace dsm::fp32 {

using dsm::kStreams;                          // weight rows read side by side (streams.h)
constexpr int64_t kBytesPerTask = 512 * 1024;  // parallel grain: long runs per thread stream best

#ifdef DSM_AVX512
// Rows [m, m + R) of x against the NB weight rows rows[0..NB).
template <int R, int NB>
inline void tile(const float* x, int64_t m, const float* w, const float* bias, float* y, int64_t N,
                 const int64_t* rows, int64_t K) {
  const float* wr[NB];
  const float* next[NB];  // where each row's stream continues: prefetched while the row is read
  for (int j = 0; j < NB; ++j) {
    wr[j] = w + rows[j] * K;
    next[j] = w + std::min(rows[j] + 1, N - 1) * K;
  }
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[NB];
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(next[j] + k), _MM_HINT_T0);
      wv[j] = _mm512_loadu_ps(wr[j] + k);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + (m + r) * K + k);
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
    }
  }
  if (k < K) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm512_maskz_loadu_ps(tail, wr[j] + k);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, x + (m + r) * K + k);
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j)
      y[(m + r) * N + rows[j]] = _mm512_reduce_add_ps(acc[r][j]) + (bias ? bias[rows[j]] : 0.f);
}
#endif

// Without AVX-512: a plain dot product (agrees with the AVX-512 path to float rounding).
inline void row_portable(const float* x, int64_t m, const float* w, const float* bias, float* y, int64_t N,
                         int64_t n, int64_t K) {
  float total = 0.f;
  for (int64_t k = 0; k < K; ++k) total += x[m * K + k] * w[n * K + k];
  y[m * N + n] = total + (bias ? bias[n] : 0.f);
}

// All M rows of x against the weight rows rows[0..count), count = kStreams or 1 (the rows left over).
inline void weight_rows(const float* x, int64_t M, const float* w, const float* bias, float* y, int64_t N,
                 const int64_t* rows, int64_t count, int64_t K) {
#ifdef DSM_AVX512
  if (count == 1) {
    for (int64_t m = 0; m < M; ++m) tile<1, 1>(x, m, w, bias, y, N, rows, K);
    return;
  }
  int64_t m = 0;
  for (; m + 4 <= M; m += 4)
    for (int64_t j = 0; j < kStreams; j += 2) tile<4, 2>(x, m, w, bias, y, N, rows + j, K);
  for (; m + 2 <= M; m += 2)
    for (int64_t j = 0; j < kStreams; j += 4) tile<2, 4>(x, m, w, bias, y, N, rows + j, K);
  for (; m < M; ++m)
    for (int64_t j = 0; j < kStreams; j += 4) tile<1, 4>(x, m, w, bias, y, N, rows + j, K);
#else
  for (int64_t i = 0; i < count; ++i)
    for (int64_t m = 0; m < M; ++m) row_portable(x, m, w, bias, y, N, rows[i], K);
#endif
}

// y [M, N] = x [M, K] @ w [N, K].T (+ bias), on at::parallel_for threads.
inline void product(const float* x, int64_t M, const float* w, const float* bias, float* y, int64_t N, int64_t K) {
  const int64_t grain = std::max<int64_t>(kStreams, kBytesPerTask / std::max<int64_t>(1, K * 4));
  dsm::for_row_streams(N, grain, [&](const int64_t* rows, int64_t count) {
    weight_rows(x, M, w, bias, y, N, rows, count, K);
  });
}

}  // namespace dsm::fp32
