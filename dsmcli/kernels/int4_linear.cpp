// y = x @ dequant(w).T on CPU for streaming (few rows): 4-bit weights with group-wise float scales.
//
// Weights: q in [-8, 7] per input channel, stored as u = q + 8 in nibbles, two per byte: in each block of 64
// inputs [k, k + 64), byte i (0 <= i < 32) holds input k + i in its low nibble and input k + 32 + i in its high
// nibble, so a block unpacks with one 32-byte load, two masks and a shift. One float32 scale per output channel
// and per group of inputs (a multiple of 64, at most 256).
//
// Each activation row is carried as 16-bit integers with one scale per row, as in int8_linear.cpp, but split
// into two *signed* bytes: x16 = 256 * hi + lo with lo in [-128, 127] (|x16| <= 32639 keeps hi in range), so the
// unsigned nibbles u are the first (u8) operand of VNNI's u8 x s8 dot product and
// q . x16 = u . x16 - 8 * sum(x16) = 256 * (u . hi) + u . lo - 8 * sum(x16)   (the sum per row and group, exact).
// Each group's int32 lanes go to float, times the group's scale, accumulated in float; the row scale comes last.
// Per (row, output) the operations never depend on the other rows of x: a row's result is the same bit for bit
// whatever it is batched with. Weight rows are read as kStreams concurrent streams (streams.h).
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

using dsm::kStreams;
constexpr int64_t kRowsPerTask = 512;
constexpr int64_t kMaxGroup = 256;
constexpr int64_t kBlock = 64;  // inputs per packed block (32 bytes)
constexpr float kX16Max = 32639.f;  // 127 * 256 + 127: hi and lo both fit a signed byte

struct Rows {  // the activation rows as signed bytes lo, hi; per (row, group) sum of x16; scale per row
  const int8_t* lo;
  const int8_t* hi;
  const int32_t* sums;  // [M, G]
  const float* scale;
};

#ifdef DSM_VNNI
inline __m512i unpack(const uint8_t* p, __m256i mask) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i low = _mm256_and_si256(v, mask);
  const __m256i high = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
  return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

// Activation rows [m, m + R) against the NB weight rows rows[0..NB) (packed [N, K / 2]).
template <int R, int NB>
inline void tile(Rows x, int64_t m, const uint8_t* w, const float* s, float* y, int64_t N, const int64_t* rows,
                 int64_t K, int64_t gs) {
  const int64_t G = K / gs, half = K / 2;
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const uint8_t* wr[NB];
  const uint8_t* next[NB];
  for (int j = 0; j < NB; ++j) {
    wr[j] = w + rows[j] * half;
    next[j] = w + std::min(rows[j] + 1, N - 1) * half;
  }
  __m512 total[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) total[r][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512i acc_lo[R][NB], acc_hi[R][NB];
    for (int r = 0; r < R; ++r) {
      const __m512i start = _mm512_maskz_set1_epi32(1, -8 * x.sums[(m + r) * G + g]);
      for (int j = 0; j < NB; ++j) {
        acc_lo[r][j] = start;
        acc_hi[r][j] = _mm512_setzero_si512();
      }
    }
#pragma GCC unroll 4
    for (int64_t k = g * gs; k < (g + 1) * gs; k += kBlock) {
      __m512i wv[NB];
      for (int j = 0; j < NB; ++j) {
        if ((k & 127) == 0) _mm_prefetch(reinterpret_cast<const char*>(next[j] + k / 2), _MM_HINT_T0);
        wv[j] = unpack(wr[j] + k / 2, mask);
      }
      for (int r = 0; r < R; ++r) {
        const __m512i lo = _mm512_loadu_si512(x.lo + (m + r) * K + k);
        const __m512i hi = _mm512_loadu_si512(x.hi + (m + r) * K + k);
        for (int j = 0; j < NB; ++j) {
          acc_lo[r][j] = _mm512_dpbusd_epi32(acc_lo[r][j], wv[j], lo);
          acc_hi[r][j] = _mm512_dpbusd_epi32(acc_hi[r][j], wv[j], hi);
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

inline int32_t nibble(const uint8_t* row, int64_t k) {  // u = q + 8 of input k of a packed row
  const int64_t block = k / kBlock, i = k % kBlock;
  const uint8_t byte = row[block * (kBlock / 2) + (i % (kBlock / 2))];
  return i < kBlock / 2 ? (byte & 0x0F) : (byte >> 4);
}

// The same integer arithmetic without VNNI (lane order differs: results agree to float rounding).
inline void row_portable(Rows x, int64_t m, const uint8_t* w, const float* s, float* y, int64_t N, int64_t n,
                         int64_t K, int64_t gs) {
  const int64_t G = K / gs;
  const uint8_t* row = w + n * (K / 2);
  float total = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    int32_t lo = -8 * x.sums[m * G + g], hi = 0;
    for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
      const int32_t u = nibble(row, k);
      lo += u * x.lo[m * K + k];
      hi += u * x.hi[m * K + k];
    }
    total += static_cast<float>(hi * 256 + lo) * s[n * G + g];
  }
  y[m * N + n] = total * x.scale[m];
}

void weight_rows(Rows x, int64_t M, const uint8_t* w, const float* s, float* y, int64_t N, const int64_t* rows,
                 int64_t count, int64_t K, int64_t gs) {
#ifdef DSM_VNNI
  if (count == 1) {
    for (int64_t m = 0; m < M; ++m) tile<1, 1>(x, m, w, s, y, N, rows, K, gs);
    return;
  }
  int64_t m = 0;
  for (; m + 4 <= M; m += 4)
    for (int64_t j = 0; j < kStreams; j += 2) tile<4, 2>(x, m, w, s, y, N, rows + j, K, gs);
  for (; m + 2 <= M; m += 2)
    for (int64_t j = 0; j < kStreams; j += 4) tile<2, 4>(x, m, w, s, y, N, rows + j, K, gs);
  for (; m < M; ++m)
    for (int64_t j = 0; j < kStreams; j += 4) tile<1, 4>(x, m, w, s, y, N, rows + j, K, gs);
#else
  for (int64_t i = 0; i < count; ++i)
    for (int64_t m = 0; m < M; ++m) row_portable(x, m, w, s, y, N, rows[i], K, gs);
#endif
}

void split_rows(const float* x, int64_t M, int64_t K, int64_t gs, int8_t* lo, int8_t* hi, int32_t* sums,
                float* scale) {
  const int64_t G = K / gs;
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    float peak = 0.f;
    for (int64_t k = 0; k < K; ++k) peak = std::max(peak, std::fabs(row[k]));
    const float sc = peak > 0.f ? peak / kX16Max : 1.f;
    for (int64_t g = 0; g < G; ++g) {
      int32_t sum = 0;
      for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
        const float v = std::min(kX16Max, std::max(-kX16Max, std::nearbyint(row[k] / sc)));
        const int32_t q = static_cast<int32_t>(v);
        const int32_t l = ((q + 128) & 0xFF) - 128;  // q = 256 * h + l, l in [-128, 127]
        lo[m * K + k] = static_cast<int8_t>(l);
        hi[m * K + k] = static_cast<int8_t>((q - l) / 256);
        sum += q;
      }
      sums[m * G + g] = sum;
    }
    scale[m] = sc;
  }
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, int64_t group_size) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous(), "w: contiguous uint8 [N, K / 2]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) * 2 == K, "w must be [N, K / 2]");
  TORCH_CHECK(group_size > 0 && group_size % kBlock == 0 && group_size <= kMaxGroup && K % group_size == 0,
              "group size must divide K, be a multiple of 64 and at most 256");
  const int64_t G = K / group_size;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == N * G,
              "scales: contiguous float32 [N, K / group_size]");
  at::Tensor y = at::empty({M, N}, x.options());
  at::Tensor bytes = at::empty({2, M, K}, x.options().dtype(at::kChar));
  at::Tensor sums = at::empty({M, G}, x.options().dtype(at::kInt));
  at::Tensor row_scale = at::empty({M}, x.options());
  int8_t* lo = bytes.data_ptr<int8_t>();
  split_rows(x.data_ptr<float>(), M, K, group_size, lo, lo + M * K, sums.data_ptr<int32_t>(),
             row_scale.data_ptr<float>());
  const Rows x_rows{lo, lo + M * K, sums.data_ptr<int32_t>(), row_scale.data_ptr<float>()};
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = scales.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  dsm::for_row_streams(N, kRowsPerTask, [&](const int64_t* rows, int64_t count) {
    weight_rows(x_rows, M, wp, sp, yp, N, rows, count, K, group_size);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(dsmcli_int4, m) { m.def("linear(Tensor x, Tensor w, Tensor scales, int group_size) -> Tensor"); }
TORCH_LIBRARY_IMPL(dsmcli_int4, CPU, m) { m.impl("linear", &int4_linear); }
