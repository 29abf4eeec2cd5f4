// y = x @ w.T (+ bias) on CPU for streaming steps: a few float32 rows of x against a large float32 weight.
//
// At streaming sizes the product is a matter of reading the weight once at memory speed. BLAS serves these
// shapes with GEMM kernels that pack the weight (an extra pass over it) or with one sequential stream per
// thread, which on the project's 2-core VM reaches ~60 % of the bandwidth that several concurrent streams get.
// Here each thread reads kStreams far-apart runs of consecutive weight rows side by side, prefetching the row
// that follows each one, and multiplies each weight row with every row of x while it is in L1.
// Each output is one dot product whose float order depends only on K (16-lane partial sums, a masked tail,
// then the lanes summed), never on M or on the other rows: a row's result is the same bit for bit whatever it
// is batched with. It differs from BLAS by float rounding (~1e-6 relative).
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fp32_product.h"

namespace {

using dsm::fp32::product;

at::Tensor fp32_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous(), "w: contiguous float32 [N, K]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K, "w must be [N, K]");
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N,
                "bias: contiguous float32 [N]");
    bp = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({M, N}, x.options());
  product(x.data_ptr<float>(), M, w.data_ptr<float>(), bp, y.data_ptr<float>(), N, K);
  return y;
}

// The augmented rows [-2r, |r|^2, 1] [M, D + 2] of the residual rows r [M, D].
void augment(const float* residual, int64_t M, int64_t D, float* augmented) {
  const int64_t K = D + 2;
  for (int64_t m = 0; m < M; ++m) {
    float norm = 0.f;
    for (int64_t d = 0; d < D; ++d) {
      const float r = residual[m * D + d];
      augmented[m * K + d] = -2.f * r;
      norm += r * r;
    }
    augmented[m * K + D] = norm;
    augmented[m * K + D + 1] = 1.f;
  }
}

// The quantizer's choice among distances offered in ascending index order: the smallest sqrt(max(0, distance)),
// the lowest index on ties.
struct Nearest {
  int64_t index = -1;
  float distance = 0.f;
  void offer(int64_t n, float squared) {
    const float d = std::sqrt(std::max(0.f, squared));
    if (index < 0 || d < distance) {
      distance = d;
      index = n;
    }
  }
};

// r -= the centroid (the first D values of the augmented table row).
inline void subtract(float* residual, const float* row, int64_t D) {
  for (int64_t d = 0; d < D; ++d) residual[d] -= row[d];
}

// Residual vector quantization of the rows of x [M, D] over tables [L, bins, D + 2] (rows [e, 1, |e|^2]):
// level by level, code = argmin_e sqrt(max(0, [-2r, |r|^2, 1] . [e, 1, |e|^2])) (lowest index on ties), then
// r -= e[code]. The arithmetic of dsmcli.codec.quantizer (the augmented product by the kernel above) without a
// Python round trip per level. Returns codes [L, M] int64.
at::Tensor rvq_encode(const at::Tensor& x, const at::Tensor& tables) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, D]");
  TORCH_CHECK(tables.dim() == 3 && tables.scalar_type() == at::kFloat && tables.is_contiguous() &&
                  tables.size(2) == x.size(1) + 2,
              "tables: contiguous float32 [L, bins, D + 2]");
  const int64_t M = x.size(0), D = x.size(1), L = tables.size(0), bins = tables.size(1), K = D + 2;
  at::Tensor codes = at::empty({L, M}, x.options().dtype(at::kLong));
  std::vector<float> residual(x.data_ptr<float>(), x.data_ptr<float>() + M * D);
  std::vector<float> augmented(M * K), distances(M * bins);
  int64_t* cp = codes.data_ptr<int64_t>();
  for (int64_t level = 0; level < L; ++level) {
    const float* table = tables.data_ptr<float>() + level * bins * K;
    augment(residual.data(), M, D, augmented.data());
    product(augmented.data(), M, table, nullptr, distances.data(), bins, K);
    for (int64_t m = 0; m < M; ++m) {
      Nearest nearest;
      for (int64_t n = 0; n < bins; ++n) nearest.offer(n, distances[m * bins + n]);
      cp[level * M + m] = nearest.index;
      subtract(residual.data() + m * D, table + nearest.index * K, D);
    }
  }
  return codes;
}

#ifdef DSM_AVX512
// x [D] . e8[row] for the weight rows rows[0..NB) side by side (e8: int8 [N, D], widened to float32 exactly).
template <int NB>
inline void screen_tile(const float* x, const int8_t* e8, int64_t D, int64_t N, const int64_t* rows, float* out) {
  const int8_t* er[NB];
  const char* next[NB];
  __m512 acc[NB];
  for (int j = 0; j < NB; ++j) {
    er[j] = e8 + rows[j] * D;
    next[j] = reinterpret_cast<const char*>(e8 + std::min(rows[j] + 1, N - 1) * D);
    acc[j] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < D; k += 16) {
    const __m512 xv = _mm512_loadu_ps(x + k);
    for (int j = 0; j < NB; ++j) {
      if ((k & 63) == 0) _mm_prefetch(next[j] + k, _MM_HINT_T0);
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(er[j] + k));
      acc[j] = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), acc[j]);
    }
  }
  for (int j = 0; j < NB; ++j) out[rows[j]] = _mm512_reduce_add_ps(acc[j]);
}

// out[m, n] = x[m, :D] . e8[n] (x [M, stride]: the augmented rows, whose first D values are -2r) for the weight
// rows rows[0..count).
void screen_rows(const float* x, int64_t stride, int64_t M, const int8_t* e8, int64_t D, const int64_t* rows,
                 int64_t count, float* out, int64_t N) {
  for (int64_t m = 0; m < M; ++m) {
    if (count == dsm::kStreams)
      screen_tile<dsm::kStreams>(x + m * stride, e8, D, N, rows, out + m * N);
    else
      for (int64_t j = 0; j < count; ++j) screen_tile<1>(x + m * stride, e8, D, N, rows + j, out + m * N);
  }
}
#endif

// rvq_encode's codes, bit for bit, reading the centroids mostly as int8 (a quarter of the bytes). Per level and
// row: approximate distances a[n] = scale[n] (-2r . e8[n]) + |r|^2 + |e[n]|^2 from the int8 table `screen`
// [L, bins, D] with one float32 scale per centroid `scales` [L, bins] (e ~ scale * e8), each within
//   bound[n] = 2 |r| |e[n] - scale e8[n]| + 2 K 2^-24 (2 |r| (|e[n]| + |e[n] - scale e8[n]|) + |r|^2 + |e[n]|^2)
// of the exact real value (the table's rounding error, whose norm `slack` [L, bins] holds, by Cauchy-Schwarz;
// then float32 summation error, generously, for this sum and for rvq_encode's); `norms` [L, bins] holds |e[n]|,
// `squares` [L, bins] the tables' |e[n]|^2 column (contiguous: read from the tables it costs a cache miss a row).
// Only the centroids with a[n] - bound[n] <= max(0, min(a + bound)) (1 + 2^-20) can be rvq_encode's choice (the
// widening covers distances that differ but whose clamped square roots round equal); their distances are then
// computed exactly as rvq_encode does (the same tile, the same float order) and the same rule picks the code.
// On a random real-size Mimi and speech, 1 candidate in the median, 34 in the mean, 1785 at most (of 2048).
at::Tensor rvq_encode_screened(const at::Tensor& x, const at::Tensor& tables, const at::Tensor& screen,
                               const at::Tensor& scales, const at::Tensor& slack, const at::Tensor& norms,
                               const at::Tensor& squares) {
#ifdef DSM_AVX512
  const int64_t M = x.size(0), D = x.size(1), L = tables.size(0), bins = tables.size(1), K = D + 2;
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && M <= 16, "x: float32 [M <= 16, D]");
  TORCH_CHECK(tables.dim() == 3 && tables.scalar_type() == at::kFloat && tables.is_contiguous() && tables.size(2) == K,
              "tables: contiguous float32 [L, bins, D + 2]");
  TORCH_CHECK(screen.scalar_type() == at::kChar && screen.is_contiguous() && D % 16 == 0 &&
                  screen.numel() == L * bins * D,
              "screen: int8 [L, bins, D] (D a multiple of 16)");
  for (const at::Tensor* t : {&scales, &slack, &norms, &squares})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == L * bins,
                "scales, slack, norms, squares: float32 [L, bins]");
  at::Tensor codes = at::empty({L, M}, x.options().dtype(at::kLong));
  std::vector<float> residual(x.data_ptr<float>(), x.data_ptr<float>() + M * D);
  std::vector<float> augmented(M * K), approx(M * bins), exact(bins), low(bins), high(bins);
  std::vector<int64_t> candidates;
  int64_t* cp = codes.data_ptr<int64_t>();
  const float summation = 2.f * static_cast<float>(K) * std::ldexp(1.f, -24);
  const int64_t grain = std::max<int64_t>(dsm::kStreams, 256 * 1024 / D);
  for (int64_t level = 0; level < L; ++level) {
    const float* table = tables.data_ptr<float>() + level * bins * K;
    const int8_t* e8 = screen.data_ptr<int8_t>() + level * bins * D;
    const float* scale = scales.data_ptr<float>() + level * bins;
    const float* error = slack.data_ptr<float>() + level * bins;
    const float* norm = norms.data_ptr<float>() + level * bins;
    const float* q = squares.data_ptr<float>() + level * bins;
    augment(residual.data(), M, D, augmented.data());
    dsm::for_row_streams(bins, grain, [&](const int64_t* rows, int64_t count) {
      screen_rows(augmented.data(), K, M, e8, D, rows, count, approx.data(), bins);
    });
    for (int64_t m = 0; m < M; ++m) {
      const float* row = augmented.data() + m * K;  // [-2r, |r|^2, 1]
      const float squared = row[D], r_norm = std::sqrt(squared);
      const float* dots = approx.data() + m * bins;
      for (int64_t n = 0; n < bins; ++n) {  // a +- bound (plain loops: vectorized by the compiler)
        const float a = scale[n] * dots[n] + squared + q[n];
        const float bound =
            2.f * r_norm * error[n] + summation * (2.f * r_norm * (norm[n] + error[n]) + squared + q[n]);
        low[n] = a - bound;
        high[n] = a + bound;
      }
      __m512 least = _mm512_set1_ps(std::numeric_limits<float>::infinity());
      int64_t n = 0;
      for (; n + 16 <= bins; n += 16) least = _mm512_min_ps(least, _mm512_loadu_ps(high.data() + n));
      float upper = _mm512_reduce_min_ps(least);
      for (; n < bins; ++n) upper = std::min(upper, high[n]);
      const float threshold = std::max(upper, 0.f) * (1.f + std::ldexp(1.f, -20));
      candidates.clear();
      for (n = 0; n < bins; ++n)
        if (low[n] <= threshold) candidates.push_back(n);
      Nearest nearest;  // the exact distances of the candidates (ascending): rvq_encode's augmented row and tile
      for (const int64_t n : candidates) {
        dsm::fp32::tile<1, 1>(row, 0, table, nullptr, exact.data(), bins, &n, K);
        nearest.offer(n, exact[n]);
      }
      cp[level * M + m] = nearest.index;
      subtract(residual.data() + m * D, table + nearest.index * K, D);
    }
  }
  return codes;
#else
  return rvq_encode(x, tables);
#endif
}

}  // namespace

TORCH_LIBRARY(dsmcli_fp32, m) {
  m.def("linear(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("rvq_encode(Tensor x, Tensor tables) -> Tensor");
  m.def("rvq_encode_screened(Tensor x, Tensor tables, Tensor screen, Tensor scales, Tensor slack, Tensor norms, "
        "Tensor squares) -> Tensor");
}
TORCH_LIBRARY_IMPL(dsmcli_fp32, CPU, m) {
  m.impl("linear", &fp32_linear);
  m.impl("rvq_encode", &rvq_encode);
  m.impl("rvq_encode_screened", &rvq_encode_screened);
}
