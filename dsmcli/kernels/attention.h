// The attention of one query over a KV ring, shared by decode_attention.cpp (the LM's one-query-per-slot decode
// attention) and mimi_transformer.cpp (the attention inside Mimi's fused transformer step): one inner loop, one
// float order, for both.
//
// softmax(q . k_s / sqrt(D)) . v_s over the cells s < span that `visible(s)` admits (the LM: its mask row; Mimi:
// the cells whose position lies in the query's context window). The ring holds float32 or float16 keys and values
// (float16: half the bytes, converted exactly to float32 as read). Each cell's keys, then its values, are read as
// kStreams concurrent memory streams with a software prefetch ahead of the reads (streams.h): what reaches the
// machine's bandwidth on the LM's 750-cell rings. The arithmetic is float32 throughout: each score a dot product
// over two 16-lane accumulators (AVX-512), exp(score - max) by std::exp, their sum in cell order, the values
// weighted by the unnormalised exps (FMA, in the streams' cell order) and scaled by 1 / sum at the end; so on the
// same keys and values it agrees with SDPA to float rounding, and a query's result depends only on its own ring
// (not on its batch mates). A query that sees no cell gets zeros.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "streams.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#define DSM_AVX512 1
#endif

namespace dsm::attention {

using dsm::kStreams;               // cells read side by side (see cells() and streams.h)
constexpr int64_t kAhead = 4;      // a stream's cells prefetched ahead of the one being read
constexpr int64_t kMaxDim = 256;   // head dims up to this (a multiple of 16)

#ifdef DSM_AVX512
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::Half* p) {  // IEEE half -> float, exact
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <typename T>
inline float dot(const float* a, const T* b, int64_t D) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), load16(b + d), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 16), load16(b + d + 16), acc1);
  }
  if (d < D) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), load16(b + d), acc0);
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}
#endif

// The cells 0..span-1 visited as kStreams interleaved runs (cell j * run + i at step i of run j, then the tail):
// kStreams sequential memory streams instead of one, which is what reaches this machine's bandwidth.
template <typename F>
inline void cells(int64_t span, F&& visit) {
  const int64_t run = span / kStreams;
  for (int64_t i = 0; i < run; ++i)
    for (int64_t j = 0; j < kStreams; ++j) visit(j * run + i, i + kAhead < run ? j * run + i + kAhead : -1);
  for (int64_t s = kStreams * run; s < span; ++s) visit(s, -1);
}

// out [D] = the attention of q [D] over the cells s < span of k, v ([span, D] each, or longer: cell s at s * D)
// that visible(s) admits; D a multiple of 16, at most kMaxDim; scores: room for span floats.
template <typename T, typename Visible>
void attend_query(const float* q, const T* k, const T* v, int64_t span, int64_t D, float scale,
                  Visible&& visible, float* out, std::vector<float>& scores) {
  const int64_t line = 64 / sizeof(T);  // elements per cache line
  float peak = -std::numeric_limits<float>::infinity();
  cells(span, [&](int64_t s, int64_t ahead) {
    if (ahead >= 0)
      for (int64_t d = 0; d < D; d += line) __builtin_prefetch(k + ahead * D + d, 0, 3);
    if (!visible(s)) return;
#ifdef DSM_AVX512
    const float score = dot(q, k + s * D, D) * scale;
#else
    float score = 0.f;
    for (int64_t d = 0; d < D; ++d) score += q[d] * static_cast<float>(k[s * D + d]);
    score *= scale;
#endif
    scores[s] = score;
    peak = std::max(peak, score);
  });
  if (peak == -std::numeric_limits<float>::infinity()) {  // no visible cell
    std::fill(out, out + D, 0.f);
    return;
  }
  float total = 0.f;
  for (int64_t s = 0; s < span; ++s) {
    if (!visible(s)) continue;
    scores[s] = std::exp(scores[s] - peak);
    total += scores[s];
  }
#ifdef DSM_AVX512
  __m512 acc[kMaxDim / 16];
  const int64_t lanes = D / 16;
  for (int64_t i = 0; i < lanes; ++i) acc[i] = _mm512_setzero_ps();
  cells(span, [&](int64_t s, int64_t ahead) {
    if (ahead >= 0)
      for (int64_t d = 0; d < D; d += line) __builtin_prefetch(v + ahead * D + d, 0, 3);
    if (!visible(s)) return;
    const __m512 p = _mm512_set1_ps(scores[s]);
    for (int64_t i = 0; i < lanes; ++i) acc[i] = _mm512_fmadd_ps(p, load16(v + s * D + i * 16), acc[i]);
  });
  const __m512 inv = _mm512_set1_ps(1.f / total);
  for (int64_t i = 0; i < lanes; ++i) _mm512_storeu_ps(out + i * 16, _mm512_mul_ps(acc[i], inv));
#else
  for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
  for (int64_t s = 0; s < span; ++s) {
    if (!visible(s)) continue;
    for (int64_t d = 0; d < D; ++d) out[d] += scores[s] * static_cast<float>(v[s * D + d]);
  }
  for (int64_t d = 0; d < D; ++d) out[d] /= total;
#endif
}

}  // namespace dsm::attention
