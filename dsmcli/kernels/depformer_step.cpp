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
//
// The `frame` op runs all the sub-steps of a main step in one call: per codebook its input projection, the
// embedding of the previous codebook's token, the stack above, the CFG mix and the sampling (the ATen operators
// of dsmcli.engine.sampling.sample_token in the same order: same random draws, same tokens). Its `threads`
// argument: 0 every linear on torch's pool, 1 the calling thread alone (no parallel region), 2 one OpenMP region
// per frame whose second thread computes half of each halved linear (kinds 5-7).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DSM_PAUSE() _mm_pause()
#else
#define DSM_PAUSE() ((void)0)
#endif

namespace {

using Fp32Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&);
using Int8Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using Int4Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// A second thread that computes half of each split linear (kinds 5-7 below) while the calling thread computes the
// other half: one OpenMP region per frame instead of one per linear (each costs a thread wake-up, ~20-30 us on
// the 2-core VM under PASSIVE waiting, ~600 per frame). Hand-offs are a generation counter each way; a waiting
// thread spins briefly, then yields its core (so an oversubscribed machine is not made worse).
struct Helper {
  std::atomic<int64_t> posted{0}, done{0};
  int64_t kind = 0, gs = 0;
  const at::Tensor* weights = nullptr;  // the second half's tensors
  const at::Tensor* x = nullptr;
  at::Tensor out;
  bool exit = false;
  std::exception_ptr error;
};

constexpr int kSpins = 4000;  // ~0.1 ms of pause instructions before yielding

inline void wait_for(const std::atomic<int64_t>& counter, int64_t target) {
  for (int spins = 0; counter.load(std::memory_order_acquire) < target; ++spins) {
    if (spins < kSpins) {
      DSM_PAUSE();
    } else {
      std::this_thread::yield();
    }
  }
}

// y = x @ W.T on one linear's tensors (kinds 0-2, as in Cursor::apply).
at::Tensor native_linear(int64_t kind, int64_t gs, const at::Tensor* w, const at::Tensor& x) {
  if (kind == 0) {
    static auto fp32 = op<Fp32Linear>("dsmcli_fp32::linear");
    return fp32.call(x, w[0], c10::nullopt);
  }
  if (kind == 1) {
    static auto int8 = op<Int8Linear>("dsmcli_int8::linear");
    return int8.call(x, w[0], w[1], w[2], gs);
  }
  TORCH_CHECK(kind == 2, "depformer_step: unknown linear kind ", kind);
  static auto int4 = op<Int4Linear>("dsmcli_int4::linear");
  return int4.call(x, w[0], w[1], gs);
}

constexpr int64_t kTensorsPerKind[3] = {1, 3, 2};

void helper_loop(Helper& helper) {
  for (int64_t generation = 1;; ++generation) {
    wait_for(helper.posted, generation);
    if (helper.exit) return;
    try {
      helper.out = native_linear(helper.kind, helper.gs, helper.weights, *helper.x);
    } catch (...) {
      helper.error = std::current_exception();
    }
    helper.done.store(generation, std::memory_order_release);
  }
}

struct Cursor {  // walks the flat weight list and the per-linear kinds / group sizes from given starts
  const std::vector<at::Tensor>& tensors;
  const std::vector<int64_t>& kinds;
  const std::vector<int64_t>& group_sizes;
  size_t tensor = 0, linear = 0;
  Helper* helper = nullptr;  // computes the second half of split linears (null: this thread does both halves)
  int64_t* generation = nullptr;

  const at::Tensor& next() {
    TORCH_CHECK(tensor < tensors.size(), "depformer_step: the weight list is too short");
    return tensors[tensor++];
  }

  std::pair<int64_t, int64_t> next_kind() {
    TORCH_CHECK(linear < kinds.size() && linear < group_sizes.size(), "depformer_step: too few kinds");
    const int64_t kind = kinds[linear], gs = group_sizes[linear];
    ++linear;
    return {kind, gs};
  }

  // y = x @ W.T for the next linear of the list (x [B, K] float32 contiguous). Kinds: 0 the native float32
  // kernel, 1 int8, 2 int4 (the native kernels, as Int8Weight / Int4Weight.linear call them), 3 torch's
  // product as dsmcli.nn.linear.linear computes it (mv for one row, else (W @ x.T).T), 4 at::linear (F.linear).
  // Kinds 5, 6, 7: kinds 0, 1, 2 with the weight split in two halves of its output rows (the tensors of the first,
  // then of the second): the halves are computed on two threads and joined; every output is computed as the
  // unsplit kernel computes it (the kernels never mix outputs), so the result is the same bit for bit.
  at::Tensor apply(const at::Tensor& x) {
    const auto [kind, gs] = next_kind();
    if (kind >= 5 && kind <= 7) {
      const int64_t base = kind - 5, count = kTensorsPerKind[base];
      TORCH_CHECK(tensor + 2 * count <= tensors.size(), "depformer_step: the weight list is too short");
      const at::Tensor* first = &tensors[tensor];
      const at::Tensor* second = first + count;
      tensor += 2 * count;
      at::Tensor low, high;
      if (helper != nullptr) {
        helper->kind = base;
        helper->gs = gs;
        helper->weights = second;
        helper->x = &x;
        helper->posted.store(++*generation, std::memory_order_release);
        low = native_linear(base, gs, first, x);
        wait_for(helper->done, *generation);
        if (helper->error) std::rethrow_exception(helper->error);
        high = std::move(helper->out);
      } else {
        low = native_linear(base, gs, first, x);
        high = native_linear(base, gs, second, x);
      }
      return at::cat({low, high}, 1);
    }
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
    if (kind == 3) {
      const at::Tensor& w = next();
      if (x.size(0) == 1) return at::mv(w, x[0]).unsqueeze(0);
      return at::mm(w, x.t()).t().contiguous();
    }
    if (kind == 4) return at::linear(x, next());
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

// The stack, output norm and head of one sub-step on x [B, D] (consumed), reading its weights from `cursor`.
at::Tensor run_stack(at::Tensor x, Cursor& cursor, at::Tensor& keys, at::Tensor& values, int64_t position,
                     int64_t num_heads, double eps, double out_eps) {
  const int64_t L = keys.size(0);
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
  return logits;
}

void check_cache(const at::Tensor& keys, const at::Tensor& values, int64_t rows, int64_t width, int64_t num_heads) {
  TORCH_CHECK(keys.dim() == 5 && keys.scalar_type() == at::kFloat && keys.is_contiguous() &&
                  values.sizes() == keys.sizes() && values.is_contiguous() && values.scalar_type() == at::kFloat,
              "keys, values: contiguous float32 [L, B, H, C, head_dim]");
  TORCH_CHECK(keys.size(1) == rows && keys.size(2) == num_heads && keys.size(2) * keys.size(4) == width,
              "keys/values do not match the input's batch and width");
}

at::Tensor depformer_step(const at::Tensor& input, at::TensorList weights, at::IntArrayRef kinds,
                          at::IntArrayRef group_sizes, at::Tensor keys, at::Tensor values, int64_t position,
                          int64_t num_heads, double eps, double out_eps) {
  TORCH_CHECK(input.dim() == 2 && input.scalar_type() == at::kFloat, "input: float32 [B, D]");
  check_cache(keys, values, input.size(0), input.size(1), num_heads);
  TORCH_CHECK(position >= 0 && position < keys.size(3), "position outside the cache");
  const std::vector<at::Tensor> tensors(weights.begin(), weights.end());
  const std::vector<int64_t> kind_list(kinds.begin(), kinds.end()), sizes(group_sizes.begin(), group_sizes.end());
  Cursor cursor{tensors, kind_list, sizes};
  at::Tensor logits = run_stack(input.contiguous().clone(), cursor, keys, values, position, num_heads, eps, out_eps);
  TORCH_CHECK(cursor.tensor == tensors.size() && cursor.linear == kind_list.size(),
              "depformer_step: the weight list is too long");
  return logits;
}

// The exponential race of dsmcli.engine.sampling._exponential_race, with the same ATen ops in the same order (so
// the same random draws and the same result bit for bit): one draw per row of probs [R, V] -> [R].
at::Tensor exponential_race(const at::Tensor& probs, const c10::optional<at::Generator>& generator) {
  const at::Tensor flat = probs.reshape({-1, probs.size(-1)});
  const at::Tensor race = flat / at::empty_like(flat).exponential_(1, generator);
  return race.argmax(-1);
}

// dsmcli.engine.sampling.sample_token on float32 logits [R, V] -> long [R], op for op.
at::Tensor sample_token(const at::Tensor& logits, double temp, int64_t top_k,
                        const c10::optional<at::Generator>& generator) {
  if (temp <= 0) return logits.argmax(-1);
  at::Tensor probs = at::softmax(logits / temp, -1);
  if (top_k > 0) {
    auto [top, candidates] = at::topk(probs, std::min<int64_t>(top_k, probs.size(-1)), -1);
    return candidates.gather(-1, exponential_race(top, generator).unsqueeze(-1)).squeeze(-1);
  }
  return exponential_race(probs, generator);
}

// One row of a token embedding table per token (tokens >= 0): kind 0 float32 [V, r], kind 1 int8 [V, r] with
// float32 scales [V, r / group] (Int8Weight.rows: code * scale, one rounding) -> [R, r].
at::Tensor table_rows(Cursor& cursor, const at::Tensor& tokens) {
  const auto [kind, gs] = cursor.next_kind();
  const at::Tensor& table = cursor.next();
  if (kind == 0) return at::embedding(table, tokens);
  TORCH_CHECK(kind == 1 && table.scalar_type() == at::kChar && table.is_contiguous(), "embedding table kind");
  const at::Tensor& scale = cursor.next();
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && gs > 0, "embedding scales");
  const int64_t R = tokens.size(0), r = table.size(1), V = table.size(0), G = scale.size(1);
  at::Tensor out = at::empty({R, r}, scale.options());
  const int64_t* ids = tokens.data_ptr<int64_t>();
  const int8_t* q = table.data_ptr<int8_t>();
  const float* s = scale.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < R; ++i) {
    TORCH_CHECK(ids[i] >= 0 && ids[i] < V, "token outside the embedding table");
    for (int64_t d = 0; d < r; ++d) o[i * r + d] = static_cast<float>(q[ids[i] * r + d]) * s[ids[i] * G + d / gs];
  }
  return out;
}

void frame_loop(const at::Tensor& hidden, const at::Tensor& first, const std::vector<at::Tensor>& tensors,
                const std::vector<int64_t>& kind_list, const std::vector<int64_t>& sizes, at::IntArrayRef starts,
                at::IntArrayRef linear_starts, at::Tensor& keys, at::Tensor& values, int64_t count,
                int64_t num_heads, double eps, at::ArrayRef<double> out_eps, double temp, int64_t top_k,
                double cfg_coef, const c10::optional<at::Generator>& generator, at::Tensor& tokens, Helper* helper,
                int64_t* generation);

// All `count` sub-steps of a main step: codebook k reads input_proj_k(hidden) plus the embedding of the previous
// token (k = 0: `first`, the text token's embedding, computed by the caller), runs the stack at position k, and
// its logits (CFG-mixed when cfg_coef != 1: rows [2B] = conditional then unconditional) are sampled as
// sample_token does; the sampled token is the next codebook's previous token. Per codebook, the lists hold: the
// input projection (one linear), then for k >= 1 the embedding table (kind 0 / 1 above) and its low-rank linear
// (kind -1: none), then the stack as depformer_step reads it. starts[k] / linear_starts[k]: where codebook k's
// tensors / kinds begin (count + 1 entries each). Returns the tokens [B, count] (long).
at::Tensor depformer_frame(const at::Tensor& hidden, const at::Tensor& first, at::TensorList weights,
                           at::IntArrayRef kinds, at::IntArrayRef group_sizes, at::IntArrayRef starts,
                           at::IntArrayRef linear_starts, at::Tensor keys, at::Tensor values, int64_t count,
                           int64_t num_heads, double eps, at::ArrayRef<double> out_eps, double temp, int64_t top_k,
                           double cfg_coef, c10::optional<at::Generator> generator, int64_t threads) {
  TORCH_CHECK(hidden.dim() == 2 && hidden.scalar_type() == at::kFloat && hidden.is_contiguous(),
              "hidden: contiguous float32 [R, dim]");
  TORCH_CHECK(first.dim() == 2 && first.scalar_type() == at::kFloat && first.size(0) == hidden.size(0),
              "first: float32 [R, D]");
  const int64_t R = hidden.size(0);
  check_cache(keys, values, R, first.size(1), num_heads);
  const bool cfg = cfg_coef != 1.0;
  TORCH_CHECK(!cfg || R % 2 == 0, "CFG needs an even number of rows");
  const int64_t B = cfg ? R / 2 : R;
  TORCH_CHECK(count >= 0 && count <= keys.size(3) && static_cast<int64_t>(starts.size()) > count &&
                  static_cast<int64_t>(linear_starts.size()) > count && static_cast<int64_t>(out_eps.size()) >= count,
              "depformer_frame: count does not match the lists");
  const std::vector<at::Tensor> tensors(weights.begin(), weights.end());
  const std::vector<int64_t> kind_list(kinds.begin(), kinds.end()), sizes(group_sizes.begin(), group_sizes.end());
  at::Tensor tokens = at::empty({B, count}, hidden.options().dtype(at::kLong));
  const bool split = std::any_of(kind_list.begin(), kind_list.end(), [](int64_t kind) { return kind >= 5; });
#if defined(_OPENMP)
  if (threads == 1 && !omp_in_parallel()) {  // one thread, no parallel region at all (restored on exit)
    struct Restore {
      int threads = omp_get_max_threads();
      ~Restore() { omp_set_num_threads(threads); }
    } restore;
    omp_set_num_threads(1);
    frame_loop(hidden, first, tensors, kind_list, sizes, starts, linear_starts, keys, values, count, num_heads, eps,
               out_eps, temp, top_k, cfg_coef, generator, tokens, nullptr, nullptr);
    return tokens;
  }
  if (threads == 2 && split && omp_get_max_threads() >= 2 && !omp_in_parallel()) {
    Helper helper;
    int64_t generation = 0;
    std::exception_ptr error;
#pragma omp parallel num_threads(2)
    {
      if (omp_get_thread_num() == 1) {
        helper_loop(helper);
      } else {
        try {
          frame_loop(hidden, first, tensors, kind_list, sizes, starts, linear_starts, keys, values, count, num_heads,
                     eps, out_eps, temp, top_k, cfg_coef, generator, tokens, omp_get_num_threads() == 2 ? &helper
                     : nullptr, &generation);
        } catch (...) {
          error = std::current_exception();
        }
        if (omp_get_num_threads() == 2) {
          helper.exit = true;
          helper.posted.store(++generation, std::memory_order_release);
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return tokens;
  }
#endif
  frame_loop(hidden, first, tensors, kind_list, sizes, starts, linear_starts, keys, values, count, num_heads, eps,
             out_eps, temp, top_k, cfg_coef, generator, tokens, nullptr, nullptr);
  return tokens;
}

void frame_loop(const at::Tensor& hidden, const at::Tensor& first, const std::vector<at::Tensor>& tensors,
                const std::vector<int64_t>& kind_list, const std::vector<int64_t>& sizes, at::IntArrayRef starts,
                at::IntArrayRef linear_starts, at::Tensor& keys, at::Tensor& values, int64_t count,
                int64_t num_heads, double eps, at::ArrayRef<double> out_eps, double temp, int64_t top_k,
                double cfg_coef, const c10::optional<at::Generator>& generator, at::Tensor& tokens, Helper* helper,
                int64_t* generation) {
  const bool cfg = cfg_coef != 1.0;
  const int64_t B = tokens.size(0);
  const auto& kinds = kind_list;
  at::Tensor previous;
  for (int64_t k = 0; k < count; ++k) {
    Cursor cursor{tensors, kind_list, sizes, static_cast<size_t>(starts[k]), static_cast<size_t>(linear_starts[k]),
                  helper, generation};
    at::Tensor x = cursor.apply(hidden);
    if (k == 0) {
      x = x + first;
    } else {
      at::Tensor rows = table_rows(cursor, previous);
      if (kinds[cursor.linear] == -1) {
        cursor.next_kind();
      } else {
        rows = cursor.apply(rows);
      }
      x = x + rows;
    }
    at::Tensor logits = run_stack(x.contiguous(), cursor, keys, values, k, num_heads, eps, out_eps[k]);
    TORCH_CHECK(cursor.tensor == static_cast<size_t>(starts[k + 1]) &&
                    cursor.linear == static_cast<size_t>(linear_starts[k + 1]),
                "depformer_frame: codebook ", k, "'s weight list does not match its layout");
    if (cfg) {
      const at::Tensor conditional = logits.narrow(0, 0, B), unconditional = logits.narrow(0, B, B);
      logits = unconditional + (conditional - unconditional) * cfg_coef;
    }
    const at::Tensor token = sample_token(logits, temp, top_k, generator);
    tokens.select(1, k).copy_(token);
    previous = cfg ? at::cat({token, token}) : token;
  }
}

}  // namespace

TORCH_LIBRARY(dsmcli_depformer, m) {
  m.def("step(Tensor input, Tensor[] weights, int[] kinds, int[] group_sizes, Tensor(a!) keys, Tensor(b!) values, "
        "int position, int num_heads, float eps, float out_eps) -> Tensor");
  m.def("frame(Tensor hidden, Tensor first, Tensor[] weights, int[] kinds, int[] group_sizes, int[] starts, "
        "int[] linear_starts, Tensor(a!) keys, Tensor(b!) values, int count, int num_heads, float eps, "
        "float[] out_eps, float temp, int top_k, float cfg_coef, Generator? generator, int threads) -> Tensor");
}
TORCH_LIBRARY_IMPL(dsmcli_depformer, CPU, m) {
  m.impl("step", &depformer_step);
  m.impl("frame", &depformer_frame);
}
