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
    product(augmented.data(), M, table, nullptr, distances.data(), bins, K);
    for (int64_t m = 0; m < M; ++m) {
      const float* row = distances.data() + m * bins;
      int64_t best = 0;
      float best_distance = std::sqrt(std::max(0.f, row[0]));
      for (int64_t n = 1; n < bins; ++n) {
        const float distance = std::sqrt(std::max(0.f, row[n]));
        if (distance < best_distance) {
          best_distance = distance;
          best = n;
        }
      }
      cp[level * M + m] = best;
      const float* centroid = table + best * K;
      for (int64_t d = 0; d < D; ++d) residual[m * D + d] -= centroid[d];
    }
  }
  return codes;
}

}  // namespace

TORCH_LIBRARY(dsmcli_fp32, m) {
  m.def("linear(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("rvq_encode(Tensor x, Tensor tables) -> Tensor");
}
TORCH_LIBRARY_IMPL(dsmcli_fp32, CPU, m) {
  m.impl("linear", &fp32_linear);
  m.impl("rvq_encode", &rvq_encode);
}
