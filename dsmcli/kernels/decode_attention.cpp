// Attention of one query step per (slot, head) over a KV ring, on CPU: what a streaming LM step needs. The ring
// holds float32 or float16 keys and values (float16: half the bytes, converted exactly to float32 as read).
//
// softmax(q . k_s / sqrt(D)) . v_s over the cells s < length[b] where mask[b, s] is true (a slot's length: the
// cells its stream wrote since its reset, so that the cells are visited in the same order, and the result has the
// same bits, whatever the slot held before; see dsmcli/nn/kv_rings.py). At batch 1 and a full
// 750-step ring this reads ~200 MB of float32 keys and values per stt-1b step; torch's CPU flash attention runs
// each head's scores as a 1-row GEMM and reached ~13 GB/s here. This kernel streams each head's keys, then its
// values, as several concurrent memory streams with a software prefetch ahead of the reads: the loop of
// attention.h, shared with Mimi's fused transformer step (mimi_transformer.cpp). The arithmetic is float32
// throughout (exp, sums, products), so on the same keys and values it agrees with SDPA to float rounding. Heads
// and slots are independent tasks: a slot's result does not depend on its batch mates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "attention.h"

namespace {

using dsm::attention::kMaxDim;

// q [B, H, 1, D] float32; keys, values [B, H, C, D] (the ring), float32 or float16; mask [B, 1, 1, span] bool
// (span <= C); lengths: int64 [B], 1 <= lengths[b] <= span, the cells slot b attends over (None: span)
// -> [B, H, 1, D] float32.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& mask, const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && q.scalar_type() == at::kFloat && q.is_contiguous(),
              "q: contiguous float32 [B, H, 1, D]");
  TORCH_CHECK(keys.sizes() == values.sizes() && keys.dim() == 4 && keys.scalar_type() == values.scalar_type() &&
                  (keys.scalar_type() == at::kFloat || keys.scalar_type() == at::kHalf) && keys.is_contiguous() &&
                  values.is_contiguous(),
              "keys, values: contiguous float32 or float16 [B, H, C, D]");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), C = keys.size(2);
  TORCH_CHECK(keys.size(0) == B && keys.size(1) == H && keys.size(3) == D, "keys must be [B, H, C, D]");
  TORCH_CHECK(D % 16 == 0 && D <= kMaxDim, "head dim must be a multiple of 16, at most 256");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.dim() == 4 && mask.size(0) == B &&
                  mask.size(1) == 1 && mask.size(2) == 1 && mask.size(3) <= C,
              "mask: contiguous bool [B, 1, 1, span <= C]");
  const int64_t span = mask.size(3);
  std::vector<int64_t> length(B, span);
  if (lengths.has_value()) {
    const at::Tensor& given = *lengths;
    TORCH_CHECK(given.dim() == 1 && given.size(0) == B && given.scalar_type() == at::kLong && given.is_contiguous(),
                "lengths: contiguous int64 [B]");
    const int64_t* lp = given.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(lp[b] >= 1 && lp[b] <= span, "lengths must be within 1..span");
      length[b] = lp[b];
    }
  }
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  at::Tensor out = at::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const bool* mp = mask.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  auto run = [&](auto* kp, auto* vp) {
    at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
      std::vector<float> scores(std::max<int64_t>(span, 1));
      for (int64_t i = i0; i < i1; ++i) {
        const bool* row = mp + (i / H) * span;
        dsm::attention::attend_query(qp + i * D, kp + i * C * D, vp + i * C * D, length[i / H], D, scale,
                                     [row](int64_t s) { return row[s]; }, op + i * D, scores);
      }
    });
  };
  if (keys.scalar_type() == at::kHalf)
    run(keys.data_ptr<at::Half>(), values.data_ptr<at::Half>());
  else
    run(keys.data_ptr<float>(), values.data_ptr<float>());
  return out;
}

// Store one step: keys[b, h, cells[b]] = k[b, h, 0] (and values from v), converted to the ring's dtype. torch's
// scatter_ into a float16 tensor takes a slow generic path (~0.5 ms per call here, vs ~10 us in float32).
void ring_write(at::Tensor keys, at::Tensor values, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& cells) {
  TORCH_CHECK(keys.sizes() == values.sizes() && keys.dim() == 4 && keys.is_contiguous() && values.is_contiguous() &&
                  keys.scalar_type() == values.scalar_type() &&
                  (keys.scalar_type() == at::kFloat || keys.scalar_type() == at::kHalf),
              "keys, values: contiguous float32 or float16 [B, H, C, D]");
  const int64_t B = keys.size(0), H = keys.size(1), C = keys.size(2), D = keys.size(3);
  TORCH_CHECK(k.sizes() == v.sizes() && k.dim() == 4 && k.size(0) == B && k.size(1) == H && k.size(2) == 1 &&
                  k.size(3) == D && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                  k.is_contiguous() && v.is_contiguous(),
              "k, v: contiguous float32 [B, H, 1, D]");
  TORCH_CHECK(cells.dim() == 1 && cells.size(0) == B && cells.scalar_type() == at::kLong, "cells: int64 [B]");
  const int64_t* cp = cells.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(cp[b] >= 0 && cp[b] < C, "cell out of range");
  auto store = [&](auto* ring, const float* src) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        auto* dst = ring + ((b * H + h) * C + cp[b]) * D;
        const float* from = src + (b * H + h) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = from[d];
      }
  };
  if (keys.scalar_type() == at::kHalf) {
    store(keys.data_ptr<at::Half>(), k.data_ptr<float>());
    store(values.data_ptr<at::Half>(), v.data_ptr<float>());
  } else {
    store(keys.data_ptr<float>(), k.data_ptr<float>());
    store(values.data_ptr<float>(), v.data_ptr<float>());
  }
}

}  // namespace

TORCH_LIBRARY(dsmcli_attn, m) {
  m.def("decode(Tensor q, Tensor keys, Tensor values, Tensor mask, Tensor? lengths=None) -> Tensor");
  m.def("write(Tensor(a!) keys, Tensor(b!) values, Tensor k, Tensor v, Tensor cells) -> ()");
}
TORCH_LIBRARY_IMPL(dsmcli_attn, CPU, m) {
  m.impl("decode", &decode_attention);
  m.impl("write", &ring_write);
}
