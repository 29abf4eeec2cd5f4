// y = x @ dequant(w).T on CPU for streaming (few rows): int8 weights with group-wise float scales.
//
// Each activation row is carried as 16-bit integers with one scale per row (x ~ x16 * scale, relative error
// <= 2^-16 of the row's peak: far below the weights' int8 rounding), so within a group of the input the
// products w * x16 accumulate exactly in int32. With AVX-512 VNNI they run as two u8 x s8 dot products on
// the bytes of x16: x16 = 256 * hi + lo with lo in [0, 255] and hi in [-128, 127], hence
// w . x16 = 256 * (w . (hi + 128) - 128 * sum(w)) + w . lo  (sum(w) per group is precomputed).
// Each group's int32 lane sums go to float, times the group's weight scale, accumulated in float; the row
// scale comes last. Per (row, output) the operations never depend on the other rows of x, so a row's result
// is the same bit for bit whatever it is batched with. Group sizes: multiples of 64, at most 256 (no int32
// overflow: |lane| <= 128 * 127 * 256 + 16 * 255 * 127 before the shift by 8).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "streams.h"
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define DSM_VNNI 1
#endif

namespace {

using dsm::kStreams;  // weight rows read side by side (streams.h)
constexpr int64_t kRowsPerTask = 512;  // parallel grain: long runs per thread stream best
constexpr int64_t kMaxGroup = 256;    // keeps every intermediate of a group's integer dot product in int32
constexpr int64_t kGroupMultiple = 64;
constexpr float kInt16Max = 32767.f;

struct Rows {  // the activation rows, split into bytes: lo (u8), hi + 128 (u8); scale per row
  const uint8_t* lo;
  const uint8_t* hi;
  const float* scale;
};

#ifdef DSM_VNNI
// Activation rows [m, m + R) against the NB weight rows rows[0..NB).
template <int R, int NB>
inline void tile(Rows x, int64_t m, const int8_t* w, const float* s, const int32_t* wsum, float* y, int64_t N,
                 const int64_t* rows, int64_t K, int64_t gs) {
  const int64_t G = K / gs;
  const int8_t* wr[NB];
  const int8_t* next[NB];  // the row after each one, i.e. where its stream continues: prefetched while it is read
  for (int j = 0; j < NB; ++j) {
    wr[j] = w + rows[j] * K;
    next[j] = w + std::min(rows[j] + 1, N - 1) * K;
  }
  __m512 total[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) total[r][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512i acc_lo[R][NB], acc_hi[R][NB];
    for (int j = 0; j < NB; ++j) {
      // lane 0 of the high part starts at -128 * sum(w): the correction of the +128 offset of hi
      const __m512i start = _mm512_maskz_set1_epi32(1, -128 * wsum[rows[j] * G + g]);
      for (int r = 0; r < R; ++r) {
        acc_lo[r][j] = _mm512_setzero_si512();
        acc_hi[r][j] = start;
      }
    }
#pragma GCC unroll 4  // a whole group per iteration at the default size: ~8 % faster at batch 1
    for (int64_t k = g * gs; k < (g + 1) * gs; k += 64) {
      __m512i wv[NB];
      for (int j = 0; j < NB; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(next[j] + k), _MM_HINT_T0);  // +15 % over hardware alone
        wv[j] = _mm512_loadu_si512(wr[j] + k);
      }
      for (int r = 0; r < R; ++r) {
        const __m512i lo = _mm512_loadu_si512(x.lo + (m + r) * K + k);
        const __m512i hi = _mm512_loadu_si512(x.hi + (m + r) * K + k);
        for (int j = 0; j < NB; ++j) {
          acc_lo[r][j] = _mm512_dpbusd_epi32(acc_lo[r][j], lo, wv[j]);
          acc_hi[r][j] = _mm512_dpbusd_epi32(acc_hi[r][j], hi, wv[j]);
        }
      }
    }
    for (int j = 0; j < NB; ++j) {
      const __m512 sc = _mm512_set1_ps(s[rows[j] * G + g]);
      for (int r = 0; r < R; ++r) {
        const __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(acc_hi[r][j], 8), acc_lo[r][j]);
        total[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, total[r][j]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) y[(m + r) * N + rows[j]] = _mm512_reduce_add_ps(total[r][j]) * x.scale[m + r];
}
#endif

// The same integer arithmetic without VNNI (lane order differs: results agree to float rounding).
inline void row_portable(Rows x, int64_t m, const int8_t* w, const float* s, const int32_t* wsum, float* y,
                         int64_t N, int64_t n, int64_t K, int64_t gs) {
  const int64_t G = K / gs;
  float total = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    int32_t lo = 0, hi = 0;
    for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
      lo += int32_t(x.lo[m * K + k]) * w[n * K + k];
      hi += int32_t(x.hi[m * K + k]) * w[n * K + k];
    }
    const int32_t dot = (hi - 128 * wsum[n * G + g]) * 256 + lo;
    total += static_cast<float>(dot) * s[n * G + g];
  }
  y[m * N + n] = total * x.scale[m];
}

// All M rows of x against the weight rows rows[0..count), count = kStreams or 1 (the rows left over).
void weight_rows(Rows x, int64_t M, const int8_t* w, const float* s, const int32_t* wsum, float* y, int64_t N,
                 const int64_t* rows, int64_t count, int64_t K, int64_t gs) {
#ifdef DSM_VNNI
  if (count == 1) {
    for (int64_t m = 0; m < M; ++m) tile<1, 1>(x, m, w, s, wsum, y, N, rows, K, gs);
    return;
  }
  int64_t m = 0;
  for (; m + 4 <= M; m += 4)
    for (int64_t j = 0; j < kStreams; j += 2) tile<4, 2>(x, m, w, s, wsum, y, N, rows + j, K, gs);
  for (; m + 2 <= M; m += 2)
    for (int64_t j = 0; j < kStreams; j += 4) tile<2, 4>(x, m, w, s, wsum, y, N, rows + j, K, gs);
  for (; m < M; ++m)
    for (int64_t j = 0; j < kStreams; j += 4) tile<1, 4>(x, m, w, s, wsum, y, N, rows + j, K, gs);
#else
  for (int64_t i = 0; i < count; ++i)
    for (int64_t m = 0; m < M; ++m) row_portable(x, m, w, s, wsum, y, N, rows[i], K, gs);
#endif
}

void split_rows(const float* x, int64_t M, int64_t K, uint8_t* lo, uint8_t* hi, float* scale) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    float peak = 0.f;
    for (int64_t k = 0; k < K; ++k) peak = std::max(peak, std::fabs(row[k]));
    const float sc = peak > 0.f ? peak / kInt16Max : 1.f;
    for (int64_t k = 0; k < K; ++k) {
      const float v = std::min(kInt16Max, std::max(-kInt16Max, std::nearbyint(row[k] / sc)));
      const int32_t q = static_cast<int32_t>(v);
      lo[m * K + k] = static_cast<uint8_t>(q & 0xFF);
      hi[m * K + k] = static_cast<uint8_t>((q >> 8) + 128);
    }
    scale[m] = sc;
  }
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& wsum,
                       int64_t group_size) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous(), "w: contiguous int8 [N, K]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K, "w must be [N, K]");
  TORCH_CHECK(group_size > 0 && group_size % kGroupMultiple == 0 && group_size <= kMaxGroup && K % group_size == 0,
              "group size must divide K, be a multiple of 64 and at most 256");
  const int64_t G = K / group_size;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == N * G,
              "scales: contiguous float32 [N, K / group_size]");
  TORCH_CHECK(wsum.scalar_type() == at::kInt && wsum.is_contiguous() && wsum.numel() == N * G,
              "wsum: contiguous int32 [N, K / group_size]");
  at::Tensor y = at::empty({M, N}, x.options());
  at::Tensor bytes = at::empty({2, M, K}, x.options().dtype(at::kByte));
  at::Tensor row_scale = at::empty({M}, x.options());
  uint8_t* lo = bytes.data_ptr<uint8_t>();
  split_rows(x.data_ptr<float>(), M, K, lo, lo + M * K, row_scale.data_ptr<float>());
  const Rows x_rows{lo, lo + M * K, row_scale.data_ptr<float>()};
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  const int32_t* ws = wsum.data_ptr<int32_t>();
  float* yp = y.data_ptr<float>();
  dsm::for_row_streams(N, kRowsPerTask, [&](const int64_t* rows, int64_t count) {
    weight_rows(x_rows, M, wp, sp, ws, yp, N, rows, count, K, group_size);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(dsmcli_int8, m) {
  m.def("linear(Tensor x, Tensor w, Tensor scales, Tensor wsum, int group_size) -> Tensor");
}
TORCH_LIBRARY_IMPL(dsmcli_int8, CPU, m) { m.impl("linear", &int8_linear); }
