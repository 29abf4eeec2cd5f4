// One depformer sub-step (one codebook) of the DSM LM in one native call: the whole stack, the codebook's output
// norm and its head, for B rows.
//
// The depformer runs 32 sequential sub-steps per 80 ms frame, each a 4-layer transformer on one position; in
// torch that is ~150 small ops per sub-step whose dispatch costs more than their arithmetic. Here a sub-step is:
// per layer, RMSNorm -> in_proj -> attention over the positions 0..p of this frame (keys/values kept in `keys` /
// `values` [L, B, H, C, hd], written at cell p; no positional embedding) -> out_proj -> residual -> RMSNorm ->
// gated SiLU FFN -> residual; then the output RMSNorm (optional) and the head. The linears are the project's
// native streaming kernels (float32 `dsmcli_fp32::linear`, `dsmcli_int8::linear`, `dsmcli_int4::linear`),
// called through the dispatcher: their libraries must be loaded first (dsmcli.engine.depformer_native does).
//
// Weights come as one flat tensor list, read in this order: per layer alpha1 [D], in_proj, out_proj, alpha2 [D],
// ffn_in, ffn_out; then the output norm's alpha (an empty tensor: no norm), the head, its bias (empty: none).
// A linear takes 1 tensor (kind 0, float32 [N, K]), 3 (kind 1: int8 q, scales, group sums) or 2 (kind 2: int4
// packed q, scales); `kinds` and `group_sizes` have one entry per linear in the same order. Everything float32.
// The float arithmetic per row never reads another row: a row's logits do not depend on its batch mates.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using Fp32Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&);
using Int8Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using Int4Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

struct Cursor {  // walks the flat weight list and the per-linear kinds / group sizes
  const std::vector<at::Tensor>& tensors;
  const std::vector<int64_t>& kinds;
  const std::vector<int64_t>& group_sizes;
  size_t tensor = 0, linear = 0;

  const at::Tensor& next() {
    TORCH_CHECK(tensor < tensors.size(), "depformer_step: the weight list is too short");
    return tensors[tensor++];
  }

  // y = x @ W.T for the next linear of the list.
  at::Tensor apply(const at::Tensor& x) {
    TORCH_CHECK(linear < kinds.size() && linear < group_sizes.size(), "depformer_step: too few kinds");
    const int64_t kind = kinds[linear], gs = group_sizes[linear];
    ++linear;
    if (kind == 0) {
      static auto fp32 = op<Fp32Linear>("dsmcli_fp32::linear");
      return fp32.call(x, next(), c10::nullopt);
    }
    if (kind == 1) {
      static auto int8 = op<Int8Linear>("dsmcli_int8::linear");
      const at::Tensor& q = next();
      const at::Tensor& scales = next();
      return int8.call(x, q, scales, next(), gs);
    }
    TORCH_CHECK(kind == 2, "depformer_step: unknown linear kind ", kind);
    static auto int4 = op<Int4Linear>("dsmcli_int4::linear");
    const at::Tensor& q = next();
    return int4.call(x, q, next(), gs);
  }
};

// out = x * alpha / sqrt(eps + mean(x^2)) per row of x [B, D].
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& alpha, double eps) {
  const int64_t B = x.size(0), D = x.size(1);
  TORCH_CHECK(alpha.numel() == D && alpha.scalar_type() == at::kFloat, "norm gain: float32 [D]");
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* ap = alpha.contiguous().data_ptr<float>();
  float* op_ = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    float sum = 0.f;
    for (int64_t d = 0; d < D; ++d) sum += xp[b * D + d] * xp[b * D + d];
    const float inv = 1.f / std::sqrt(sum / static_cast<float>(D) + static_cast<float>(eps));
    for (int64_t d = 0; d < D; ++d) op_[b * D + d] = xp[b * D + d] * (ap[d] * inv);
  }
  return out;
}

// Writes this position's keys/values into the cache (layer l) and attends over cells 0..p: qkv [B, 3D] -> [B, D].
at::Tensor attend(const at::Tensor& qkv, at::Tensor& keys, at::Tensor& values, int64_t l, int64_t p, int64_t H) {
  const int64_t B = qkv.size(0), D = qkv.size(1) / 3, hd = D / H, C = keys.size(3);
  at::Tensor out = at::empty({B, D}, qkv.options());
  const float* in = qkv.data_ptr<float>();
  float* kp = keys.data_ptr<float>();
  float* vp = values.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  std::vector<float> scores(p + 1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t base = (((l * B + b) * H + h) * C) * hd;
      const float* q = in + b * 3 * D + h * hd;
      for (int64_t d = 0; d < hd; ++d) {
        kp[base + p * hd + d] = in[b * 3 * D + D + h * hd + d];
        vp[base + p * hd + d] = in[b * 3 * D + 2 * D + h * hd + d];
      }
      float peak = -INFINITY;
      for (int64_t t = 0; t <= p; ++t) {
        float dot = 0.f;
        for (int64_t d = 0; d < hd; ++d) dot += q[d] * kp[base + t * hd + d];
        scores[t] = dot * scale;
        peak = std::max(peak, scores[t]);
      }
      float total = 0.f;
      for (int64_t t = 0; t <= p; ++t) {
        scores[t] = std::exp(scores[t] - peak);
        total += scores[t];
      }
      float* row = o + b * D + h * hd;
      for (int64_t d = 0; d < hd; ++d) row[d] = 0.f;
      for (int64_t t = 0; t <= p; ++t) {
        const float w = scores[t] / total;
        for (int64_t d = 0; d < hd; ++d) row[d] += w * vp[base + t * hd + d];
      }
    }
  }
  return out;
}

// a = silu(g[:, :H]) * g[:, H:] for g [B, 2H].
at::Tensor gate(const at::Tensor& g) {
  const int64_t B = g.size(0), H = g.size(1) / 2;
  at::Tensor out = at::empty({B, H}, g.options());
  const float* gp = g.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < H; ++i) {
      const float a = gp[b * 2 * H + i];
      o[b * H + i] = a / (1.f + std::exp(-a)) * gp[b * 2 * H + H + i];
    }
  return out;
}

void add_(at::Tensor& x, const at::Tensor& y) {
  float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) xp[i] += yp[i];
}

at::Tensor depformer_step(const at::Tensor& input, at::TensorList weights, at::IntArrayRef kinds,
                          at::IntArrayRef group_sizes, at::Tensor keys, at::Tensor values, int64_t position,
                          int64_t num_heads, double eps, double out_eps) {
  TORCH_CHECK(input.dim() == 2 && input.scalar_type() == at::kFloat, "input: float32 [B, D]");
  TORCH_CHECK(keys.dim() == 5 && keys.scalar_type() == at::kFloat && keys.is_contiguous() &&
                  values.sizes() == keys.sizes() && values.is_contiguous() && values.scalar_type() == at::kFloat,
              "keys, values: contiguous float32 [L, B, H, C, head_dim]");
  const int64_t L = keys.size(0);
  TORCH_CHECK(keys.size(1) == input.size(0) && keys.size(2) == num_heads && keys.size(2) * keys.size(4) == input.size(1),
              "keys/values do not match the input's batch and width");
  TORCH_CHECK(position >= 0 && position < keys.size(3), "position outside the cache");
  const std::vector<at::Tensor> tensors(weights.begin(), weights.end());
  const std::vector<int64_t> kind_list(kinds.begin(), kinds.end()), sizes(group_sizes.begin(), group_sizes.end());
  Cursor cursor{tensors, kind_list, sizes};
  at::Tensor x = input.contiguous().clone();
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& alpha1 = cursor.next();
    const at::Tensor qkv = cursor.apply(rms_norm(x, alpha1, eps));
    add_(x, cursor.apply(attend(qkv, keys, values, l, position, num_heads)));
    const at::Tensor& alpha2 = cursor.next();
    const at::Tensor hidden = cursor.apply(rms_norm(x, alpha2, eps));
    add_(x, cursor.apply(gate(hidden)));
  }
  const at::Tensor& out_alpha = cursor.next();
  if (out_alpha.numel() > 0) x = rms_norm(x, out_alpha, out_eps);
  at::Tensor logits = cursor.apply(x);
  const at::Tensor& bias = cursor.next();
  if (bias.numel() > 0) add_(logits, bias.expand_as(logits).contiguous());
  TORCH_CHECK(cursor.tensor == tensors.size() && cursor.linear == kind_list.size(),
              "depformer_step: the weight list is too long");
  return logits;
}

}  // namespace

TORCH_LIBRARY(dsmcli_depformer, m) {
  m.def("step(Tensor input, Tensor[] weights, int[] kinds, int[] group_sizes, Tensor(a!) keys, Tensor(b!) values, "
        "int position, int num_heads, float eps, float out_eps) -> Tensor");
}
TORCH_LIBRARY_IMPL(dsmcli_depformer, CPU, m) { m.impl("step", &depformer_step); }
