// One streaming step of Mimi's transformer (dsmcli/codec/transformer.py) in a single call, on CPU, float32.
//
// A step of a batch-1 Mimi stream runs 2 time steps through 8 layers. Its four products per layer read ~12.6 MB
// of weights and take ~0.6 ms (fp32_product.h); the same step run op by op in torch spent as long again on
// ~40 small ops per layer: norms, RoPE, ring writes, masks, a flash-attention call for 2 queries, GELU, layer
// scales (~4-5 ms per frame). Here those are plain loops over a few rows. Per layer (pre-norm, no biases):
//   x += ls1 * out_proj(attention(rope(in_proj(norm1(x)))))   keys/values written to the ring first
//   x += ls2 * linear2(gelu(linear1(norm2(x))))
// The rings are the stack's KVRings (dsmcli/nn/kv_rings.py: per layer keys/values [B, H, C + 1, D], one positions
// [B, C + 1] for all layers, cell C the scratch cell, never read here): a step books its T positions at cells
// (offset + t) % C, writes its T keys there, then each query attends to the cells whose position p has
// 0 <= q - p < context, with the attention loop of attention.h (the LM's decode attention's). Slots with active
// false are not written and do not advance (their output is garbage), as in the torch path. The arithmetic is the
// torch path's up to float rounding (sums in other orders, Sleef's erf, attention.h's float order); each slot's
// rows are computed alone, so a slot's result does not depend on its batch mates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention.h"
#include "fp32_product.h"

#ifdef DSM_AVX512
extern "C" __m512 Sleef_erff16_u10(__m512);  // exported by libtorch_cpu (torch's vectorized math)
#endif

namespace {

constexpr int64_t kWeightsPerLayer = 10;  // in_proj, out_proj, linear1, linear2, norm1 w/b, norm2 w/b, ls1, ls2

struct Layer {
  const float *in_proj, *out_proj, *linear1, *linear2, *norm1_w, *norm1_b, *norm2_w, *norm2_b, *ls1, *ls2;
  float *keys, *values;
};

// y = (x - mean) / sqrt(var + eps) * w + b over each row of d values (two passes, like torch's LayerNorm).
void layer_norm(const float* x, int64_t rows, int64_t d, const float* w, const float* b, float eps, float* y) {
  for (int64_t m = 0; m < rows; ++m) {
    const float* xr = x + m * d;
    float* yr = y + m * d;
    float sum = 0.f, squares = 0.f;
    for (int64_t i = 0; i < d; ++i) sum += xr[i];
    const float mean = sum / static_cast<float>(d);
    for (int64_t i = 0; i < d; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
    const float rstd = 1.f / std::sqrt(squares / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
  }
}

// x = 0.5 x (1 + erf(x / sqrt 2)), in place (torch's default, exact-erf GELU).
void gelu(float* x, int64_t n) {
  int64_t i = 0;
#ifdef DSM_AVX512
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f), alpha = _mm512_set1_ps(0.70710678118654752f);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 e = Sleef_erff16_u10(_mm512_mul_ps(v, alpha));
    _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(v, half), _mm512_add_ps(one, e)));
  }
#endif
  for (; i < n; ++i) x[i] = x[i] * 0.5f * (1.f + std::erf(x[i] * 0.70710678118654752f));
}

// Rotate the interleaved pairs (re, im) of a head's D values by the angle whose cos/sin are c[i]/s[i].
void rotate(float* v, const float* c, const float* s, int64_t D) {
  for (int64_t i = 0; i < D / 2; ++i) {
    const float re = v[2 * i], im = v[2 * i + 1];
    v[2 * i] = re * c[i] - im * s[i];
    v[2 * i + 1] = re * s[i] + im * c[i];
  }
}

// C: the ring's capacity; R = C + 1: cells per (slot, head) in the ring tensors (the scratch cell last).
struct Shape {
  int64_t B, T, d, H, D, C, R, ffn, context;
};

// out [B*T, H*D] = attention of the step's queries (from qkv [B*T, 3, H, D]) over the layer's ring, whose cells
// hold the positions k_pos [B, R].
void attend(const Shape& s, const float* qkv, const Layer& layer, const int64_t* k_pos, const int64_t* q_pos,
            const bool* active, float* out) {
  const float scale = 1.f / std::sqrt(static_cast<float>(s.D));
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(s.C);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / s.H, h = bh % s.H;
      if (active && !active[b]) continue;
      const float* keys = layer.keys + (b * s.H + h) * s.R * s.D;
      const float* values = layer.values + (b * s.H + h) * s.R * s.D;
      const int64_t* held = k_pos + b * s.R;
      for (int64_t t = 0; t < s.T; ++t) {
        const float* q = qkv + ((b * s.T + t) * 3 * s.H + h) * s.D;
        float* o = out + (b * s.T + t) * s.H * s.D + h * s.D;
        const int64_t position = q_pos[b * s.T + t];
        auto visible = [held, position, &s](int64_t c) {
          const int64_t delta = position - held[c];
          return held[c] >= 0 && delta >= 0 && delta < s.context;
        };
        dsm::attention::attend_query(q, keys, values, s.C, s.D, scale, visible, o, scores);
      }
    }
  });
}

void layer_step(const Shape& s, const Layer& layer, float* x, const float* cos, const float* sin,
                const int64_t* k_pos, const int64_t* q_pos, const int64_t* cells, const bool* active, float eps,
                float* h, float* qkv, float* mixed, float* hidden) {
  const int64_t M = s.B * s.T, d = s.d, H = s.H, D = s.D;
  layer_norm(x, M, d, layer.norm1_w, layer.norm1_b, eps, h);
  dsm::fp32::product(h, M, layer.in_proj, nullptr, qkv, 3 * d, d);
  for (int64_t m = 0; m < M; ++m) {
    const int64_t b = m / s.T;
    if (cos)
      for (int64_t part = 0; part < 2; ++part)  // q, k
        for (int64_t head = 0; head < H; ++head)
          rotate(qkv + ((m * 3 + part) * H + head) * D, cos + m * D / 2, sin + m * D / 2, D);
    if (active && !active[b]) continue;
    const int64_t cell = cells[m];
    for (int64_t head = 0; head < H; ++head) {
      const float* k = qkv + ((m * 3 + 1) * H + head) * D;
      const float* v = qkv + ((m * 3 + 2) * H + head) * D;
      std::copy(k, k + D, layer.keys + ((b * H + head) * s.R + cell) * D);
      std::copy(v, v + D, layer.values + ((b * H + head) * s.R + cell) * D);
    }
  }
  attend(s, qkv, layer, k_pos, q_pos, active, mixed);
  dsm::fp32::product(mixed, M, layer.out_proj, nullptr, h, d, d);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < d; ++i) x[m * d + i] += layer.ls1[i] * h[m * d + i];
  layer_norm(x, M, d, layer.norm2_w, layer.norm2_b, eps, h);
  dsm::fp32::product(h, M, layer.linear1, nullptr, hidden, s.ffn, d);
  gelu(hidden, M * s.ffn);
  dsm::fp32::product(hidden, M, layer.linear2, nullptr, h, d, s.ffn);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < d; ++i) x[m * d + i] += layer.ls2[i] * h[m * d + i];
}

const float* f32(const at::Tensor& t, int64_t numel, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel && t.device().is_cpu(),
              what, ": contiguous float32 CPU tensor of ", numel, " values");
  return t.data_ptr<float>();
}

int64_t* i64(const at::Tensor& t, int64_t numel, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.is_contiguous() && t.numel() == numel, what,
              ": contiguous int64 tensor of ", numel, " values");
  return t.data_ptr<int64_t>();
}

// x [B, T, d] -> [B, T, d] after all layers. active [B] bool or undefined; weights: kWeightsPerLayer per layer in
// Layer's order (in_proj [3d, d] with rows [q | k | v] each (head, D), linear1 [ffn, d], linear2 [d, ffn]; layer
// scales as ones when the model has none); keys, values: each layer's ring [B, H, C + 1, D], positions [B, C + 1]
// the positions their cells hold (KVRings: cell C is the scratch cell); offset [B]: each slot's next position.
// The step's positions are offset + t, its cells those modulo C (like KVRings.claim); the positions are booked
// and offset advances for the active slots. RoPE (interleaved pairs, frequencies max_period^(-2i/D)) unless
// max_period <= 0.
at::Tensor transformer_step(const at::Tensor& x_in, const c10::optional<at::Tensor>& active, at::TensorList weights,
                            at::TensorList keys, at::TensorList values, const at::Tensor& positions,
                            const at::Tensor& offset, int64_t num_heads, int64_t context, double max_period,
                            double eps) {
  TORCH_CHECK(x_in.dim() == 3, "x: [B, T, d]");
  const int64_t L = static_cast<int64_t>(keys.size());
  TORCH_CHECK(L > 0 && static_cast<int64_t>(weights.size()) == kWeightsPerLayer * L && values.size() == keys.size(),
              "one ring and ", kWeightsPerLayer, " weights per layer");
  TORCH_CHECK(keys[0].dim() == 4 && keys[0].size(2) >= 2, "keys: [B, H, C + 1, D]");
  Shape s{x_in.size(0), x_in.size(1), x_in.size(2), num_heads, x_in.size(2) / num_heads, keys[0].size(2) - 1,
          keys[0].size(2), weights[2].size(0), context};
  TORCH_CHECK(s.H * s.D == s.d && s.T <= s.C, "d must split into heads, T fit the ring");
  TORCH_CHECK(s.D % 16 == 0 && s.D <= dsm::attention::kMaxDim, "head dim must be a multiple of 16, at most 256");
  const int64_t M = s.B * s.T;
  at::Tensor x = x_in.clone(at::MemoryFormat::Contiguous);
  TORCH_CHECK(offset.scalar_type() == at::kLong && offset.is_contiguous() && offset.numel() == s.B, "offset: [B]");
  int64_t* k_pos = i64(positions, s.B * s.R, "positions");
  const int64_t* start = offset.data_ptr<int64_t>();
  std::vector<int64_t> qp(M), cl(M);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.T; ++t) {
      qp[b * s.T + t] = start[b] + t;
      cl[b * s.T + t] = (start[b] + t) % s.C;
    }
  std::vector<float> cos_v, sin_v;
  const float *cp = nullptr, *sp = nullptr;
  if (max_period > 0) {  // torch's float32 arithmetic: exp(i * (-2 ln(max_period) / D)), then position * frequency
    const int64_t half = s.D / 2;
    const float step = static_cast<float>(-2.0 * std::log(max_period) / static_cast<double>(s.D));
    cos_v.resize(M * half);
    sin_v.resize(M * half);
    for (int64_t i = 0; i < half; ++i) {
      const float frequency = std::exp(static_cast<float>(i) * step);
      for (int64_t m = 0; m < M; ++m) {
        const float angle = static_cast<float>(qp[m]) * frequency;
        cos_v[m * half + i] = std::cos(angle);
        sin_v[m * half + i] = std::sin(angle);
      }
    }
    cp = cos_v.data();
    sp = sin_v.data();
  }
  at::Tensor active_c;
  const bool* ap = nullptr;
  if (active && active->defined()) {
    TORCH_CHECK(active->scalar_type() == at::kBool && active->numel() == s.B, "active: bool [B]");
    active_c = active->contiguous();
    ap = active_c.data_ptr<bool>();
  }
  for (int64_t m = 0; m < M; ++m)  // every layer's ring holds these positions
    if (!ap || ap[m / s.T]) k_pos[(m / s.T) * s.R + cl[m]] = qp[m];
  std::vector<float> h(M * s.d), qkv(M * 3 * s.d), mixed(M * s.d), hidden(M * s.ffn);
  const int64_t d = s.d, ring = s.B * s.H * s.R * s.D;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* w = weights.data() + l * kWeightsPerLayer;
    Layer layer{f32(w[0], 3 * d * d, "in_proj"), f32(w[1], d * d, "out_proj"), f32(w[2], s.ffn * d, "linear1"),
                f32(w[3], d * s.ffn, "linear2"),  f32(w[4], d, "norm1.weight"),     f32(w[5], d, "norm1.bias"),
                f32(w[6], d, "norm2.weight"),     f32(w[7], d, "norm2.bias"),        f32(w[8], d, "layer_scale_1"),
                f32(w[9], d, "layer_scale_2"),
                const_cast<float*>(f32(keys[l], ring, "keys")), const_cast<float*>(f32(values[l], ring, "values"))};
    layer_step(s, layer, x.data_ptr<float>(), cp, sp, k_pos, qp.data(), cl.data(), ap, static_cast<float>(eps),
               h.data(), qkv.data(), mixed.data(), hidden.data());
  }
  int64_t* next = offset.data_ptr<int64_t>();
  for (int64_t b = 0; b < s.B; ++b)
    if (!ap || ap[b]) next[b] += s.T;
  return x;
}

}  // namespace

TORCH_LIBRARY(dsmcli_mimi, m) {
  m.def("transformer_step(Tensor x, Tensor? active, Tensor[] weights, Tensor[] keys, Tensor[] values, "
        "Tensor positions, Tensor offset, int num_heads, int context, float max_period, float eps) -> Tensor");
}
TORCH_LIBRARY_IMPL(dsmcli_mimi, CPU, m) { m.impl("transformer_step", &transformer_step); }
