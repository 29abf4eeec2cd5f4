// One streaming step of Mimi's SEANet encoder or decoder (dsmcli/codec/seanet.py) in a single call, on CPU, float32.
//
// A batch-1 step turns 1920 samples into 2 latent steps through 14 causal convs, 13 ELUs and 4 residual adds.
// Run module by module from Python, each conv also concatenated its input tail, committed the new tail, unfolded
// its input and added its bias as separate torch ops (~3-4 ms of a ~9 ms step besides the products). Here the
// layers run as a small program of ops over per-sample buffers:
//   ELU (in place), CONV (the next conv: input tail ++ input -> output; the tail kept for the next step),
//   PUSH (save the activation for a residual), ADD (add the saved activation back), CONVTR (the next transposed
//   conv: input -> output, the overlap of its last outputs kept for the next step; the decoder's upsampling) and
//   CONVTR_DW (a depthwise one: Mimi's 12.5 -> 25 Hz upsample).
// Each conv runs in the formulation that is fastest for its shape, as in dsmcli/codec/kernels.py: a direct loop
// for tiny inputs (one channel), the native few-row product (fp32_product.h) for outputs of <= 4 steps, else a
// BLAS product of the weight [O, C*K] with the unfolded input [C*K, T]. A transposed conv is one product of the
// input [T, C] with its weight [C, O*K] (BLAS; for <= 4 steps a kernel streaming the weight once) followed by the
// overlap-add of the K-long pieces (col2im), or a direct loop when depthwise. Sums run in other orders than
// torch's conv1d and conv_transpose1d (float rounding). Samples are computed one at a time, so a slot's result
// does not depend on its batch mates; slots with active false keep their tails and overlaps (their output is
// garbage), as in the torch path.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fp32_product.h"

#ifdef DSM_AVX512
extern "C" __m512 Sleef_expf16_u10(__m512);  // exported by libtorch_cpu (torch's vectorized math)
#endif

namespace {

enum Op : int64_t { kElu = 0, kConv = 1, kPush = 2, kAdd = 3, kConvTr = 4, kConvTrDepthwise = 5 };
constexpr int64_t kRowsMaxSteps = 4;    // outputs up to this many steps: the few-row product
constexpr int64_t kMinColumnSize = 16;  // C * K below this: a direct loop
constexpr int64_t kGrain = 16384;       // values per task of the elementwise loops

struct Conv {
  const float* w;  // [O, C, K]
  const float* b;  // [O] or null
  int64_t O, C, K, stride, dilation, P;
  float* tail;   // [B, C, P]: the last P inputs of each slot
  bool* fresh;   // [B] or null: replicate padding, true until the slot's first step
};

// A streaming transposed conv (dsmcli/codec/conv.py CausalConvTranspose1d): T input steps -> T * S outputs.
struct ConvTr {
  const float* w;  // [C, O, K] (groups 1) or [C, 1, K] (depthwise, O = C)
  const float* b;  // [O] or null
  int64_t C, O, K, S, P;  // P = K - S
  bool depthwise;
  float* partial;  // [B, O, P]: the overlap of the last step's outputs, bias excluded
};

#ifdef DSM_AVX512
// expm1(x) for x <= 0 within ~2 ulp: exp(x) - 1 below -1/2 (exact subtraction or nearly, |result| > 0.39), a
// degree-9 Taylor polynomial above (truncation < 1e-9 relative). Sleef's expm1 is ~6x slower than its exp here.
inline __m512 expm1_negative(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 far = _mm512_sub_ps(Sleef_expf16_u10(x), one);
  __m512 p = _mm512_set1_ps(1.f / 362880.f);
  for (const float c : {1.f / 40320.f, 1.f / 5040.f, 1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f})
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(c));
  const __m512 near = _mm512_fmadd_ps(_mm512_mul_ps(x, x), p, x);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-0.5f), _CMP_GT_OQ), far, near);
}
#endif

// x = x > 0 ? x : alpha * expm1(x), in place.
void elu(float* x, int64_t n, float alpha) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#ifdef DSM_AVX512
    const __m512 a = _mm512_set1_ps(alpha), zero = _mm512_setzero_ps();
    for (; i + 16 <= end; i += 16) {
      const __m512 v = _mm512_loadu_ps(x + i);
      const __mmask16 negative = _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ);
      if (negative) _mm512_storeu_ps(x + i, _mm512_mask_mul_ps(v, negative, expm1_negative(_mm512_min_ps(v, zero)), a));
    }
#endif
    for (; i < end; ++i)
      if (x[i] < 0.f) x[i] = alpha * std::expm1(x[i]);
  });
}

// A conv's input: the slot's tail [C, P] followed by the step's input [C, S], read in place (no concatenation).
struct Input {
  const float* tail;
  const float* x;
  int64_t P, S;

  float at(int64_t ch, int64_t j) const { return j < P ? tail[ch * P + j] : x[ch * S + j - P]; }

  // dst[t] = at(ch, start + t * stride) for t < T
  void gather(int64_t ch, int64_t start, int64_t stride, int64_t T, float* dst) const {
    int64_t t = 0;
    for (; t < T && start + t * stride < P; ++t) dst[t] = tail[ch * P + start + t * stride];
    const float* row = x + ch * S - P;
    if (stride == 1) {
      std::memcpy(dst + t, row + start + t, (T - t) * sizeof(float));
    } else {
      for (; t < T; ++t) dst[t] = row[start + t * stride];
    }
  }
};

// A float buffer whose data starts on a 64-byte boundary, like torch's allocations: MKL's GEMM rounds differently
// for differently aligned operands, so unaligned buffers made results vary from run to run. It only grows (no
// zeroing on reuse).
class Buffer {
 public:
  float* resize(int64_t n) {
    if (static_cast<int64_t>(storage_.size()) < n + kAlign) storage_.resize(n + kAlign);
    const auto address = reinterpret_cast<std::uintptr_t>(storage_.data());
    data_ = storage_.data() + (-address / sizeof(float)) % kAlign;
    size_ = n;
    return data_;
  }
  float* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  static constexpr int64_t kAlign = 16;  // floats: 64 bytes
  std::vector<float> storage_;
  float* data_ = nullptr;
  int64_t size_ = 0;
};

// out [O, T] = the conv (valid, with its stride and dilation) of the input.
void convolve(const Conv& c, const Input& in, float* out, int64_t T) {
  thread_local Buffer scratch, result;
  const int64_t CK = c.C * c.K;
  if (CK < kMinColumnSize) {
    std::vector<float> x(in.P + in.S);
    for (int64_t o = 0; o < c.O; ++o) std::fill(out + o * T, out + (o + 1) * T, c.b ? c.b[o] : 0.f);
    for (int64_t ch = 0; ch < c.C; ++ch) {
      in.gather(ch, 0, 1, in.P + in.S, x.data());
      for (int64_t o = 0; o < c.O; ++o)
        for (int64_t k = 0; k < c.K; ++k) {
          const float w = c.w[(o * c.C + ch) * c.K + k];
          const float* xk = x.data() + k * c.dilation;
          float* y = out + o * T;
          if (c.stride == 1) {
            for (int64_t t = 0; t < T; ++t) y[t] += w * xk[t];  // vectorized
          } else {
            for (int64_t t = 0; t < T; ++t) y[t] += w * xk[t * c.stride];
          }
        }
    }
    return;
  }
  if (T <= kRowsMaxSteps) {  // rows [T, C*K] against the weight [O, C*K]: reads the weight once
    float* rows = scratch.resize(T * CK);
    float* y = result.resize(T * c.O);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t ch = 0; ch < c.C; ++ch)
        for (int64_t k = 0; k < c.K; ++k) rows[t * CK + ch * c.K + k] = in.at(ch, t * c.stride + k * c.dilation);
    dsm::fp32::product(rows, T, c.w, c.b, y, c.O, CK);
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t t = 0; t < T; ++t) out[o * T + t] = y[t * c.O + o];
    return;
  }
  const float* columns = in.x;  // a 1x1 conv (no tail) reads its input as is
  if (!(c.K == 1 && c.stride == 1 && in.P == 0)) {
    float* cols = scratch.resize(CK * T);
    at::parallel_for(0, CK, std::max<int64_t>(1, kGrain / T), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row)
        in.gather(row / c.K, (row % c.K) * c.dilation, c.stride, T, cols + row * T);
    });
    columns = cols;
  }
  const auto options = at::TensorOptions().dtype(at::kFloat);
  at::Tensor y = at::from_blob(out, {c.O, T}, options);
  at::mm_out(y, at::from_blob(const_cast<float*>(c.w), {c.O, CK}, options),
             at::from_blob(const_cast<float*>(columns), {CK, T}, options));
  if (c.b)
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t t = 0; t < T; ++t) out[o * T + t] += c.b[o];
}

// y [T, N] = x.T @ w for x [C, T] and w [C, N] row-major, T <= kRowsMaxSteps: a transposed conv's first product at
// batch 1 (T = 2 latent steps against a 33 MB weight), where BLAS reads the weight at a fraction of memory speed. Each
// task keeps a block of kColumns outputs of every row in L1 and streams the weight's rows through it (the rows a few
// ahead prefetched); each output sums over c in order, so it does not depend on the thread count or the batch.
void rows_times_matrix(const float* x, int64_t T, const float* w, float* y, int64_t C, int64_t N) {
  constexpr int64_t kColumns = 512, kAhead = 4;
  const int64_t blocks = (N + kColumns - 1) / kColumns;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float acc[kRowsMaxSteps * kColumns];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n0 = block * kColumns, n = std::min(kColumns, N - n0);
      std::fill_n(acc, T * kColumns, 0.f);
      for (int64_t c = 0; c < C; ++c) {
        const float* row = w + c * N + n0;
        if (c + kAhead < C)
          for (int64_t j = 0; j < n; j += 16) __builtin_prefetch(row + kAhead * N + j);
        for (int64_t t = 0; t < T; ++t) {
          const float a = x[c * T + t];
          float* out = acc + t * kColumns;
          for (int64_t j = 0; j < n; ++j) out[j] += a * row[j];  // vectorized
        }
      }
      for (int64_t t = 0; t < T; ++t) std::copy_n(acc + t * kColumns, n, y + t * N + n0);
    }
  });
}

// out [O, T * S] = the transposed conv of x [C, T] plus the overlap carried in partial [O, P]; with update, partial
// becomes the overlap of this step's last outputs (bias excluded).
void transposed(const ConvTr& c, const float* x, int64_t T, float* out, float* partial, bool update) {
  thread_local Buffer pieces, full;
  const int64_t L = T * c.S + c.P, OK = c.O * c.K;
  float* f = full.resize(c.O * L);  // f [O, L]: the full output, overlap-added
  const float* z = nullptr;         // z [T, O*K]: the pieces of each input step (groups 1)
  if (!c.depthwise) {
    float* zt = pieces.resize(T * OK);
    if (T <= kRowsMaxSteps) {
      rows_times_matrix(x, T, c.w, zt, c.C, OK);
    } else {
      const auto options = at::TensorOptions().dtype(at::kFloat);
      at::Tensor zv = at::from_blob(zt, {T, OK}, options);
      at::mm_out(zv, at::from_blob(const_cast<float*>(x), {T, c.C}, {1, T}, options),
                 at::from_blob(const_cast<float*>(c.w), {c.C, OK}, options));
    }
    z = zt;
  }
  at::parallel_for(0, c.O, std::max<int64_t>(1, kGrain / L), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      float* row = f + o * L;
      std::copy_n(partial + o * c.P, c.P, row);
      std::fill(row + c.P, row + L, 0.f);
      for (int64_t t = 0; t < T; ++t) {
        float* y = row + t * c.S;
        if (c.depthwise) {
          const float v = x[o * T + t];
          const float* w = c.w + o * c.K;
          for (int64_t k = 0; k < c.K; ++k) y[k] += w[k] * v;
        } else {
          const float* piece = z + t * OK + o * c.K;
          for (int64_t k = 0; k < c.K; ++k) y[k] += piece[k];
        }
      }
      const float bias = c.b ? c.b[o] : 0.f;
      for (int64_t j = 0; j < T * c.S; ++j) out[o * T * c.S + j] = row[j] + bias;
      if (update) std::copy_n(row + T * c.S, c.P, partial + o * c.P);
    }
  });
}

// The tail [C, P] becomes the last P values of tail ++ x [C, S].
void advance_tail(float* tail, const float* x, int64_t C, int64_t P, int64_t S) {
  for (int64_t ch = 0; ch < C; ++ch) {
    float* t = tail + ch * P;
    const int64_t kept = std::max<int64_t>(0, P - S);  // old values that stay (S < P)
    std::memmove(t, t + P - kept, kept * sizeof(float));
    std::memcpy(t + kept, x + ch * S + S - (P - kept), (P - kept) * sizeof(float));
  }
}

// One layer with weights: a conv or a transposed conv (the program's op says which).
struct Layer {
  bool transposed;
  Conv conv;
  ConvTr convtr;
};

// The layers of the program, in program order, checked against their tensors.
std::vector<Layer> make_layers(at::IntArrayRef program, int64_t B, at::TensorList weights,
                               const c10::List<c10::optional<at::Tensor>>& biases, at::TensorList tails,
                               at::IntArrayRef strides, at::IntArrayRef dilations,
                               const c10::List<c10::optional<at::Tensor>>& fresh) {
  const size_t count = weights.size();
  TORCH_CHECK(biases.size() == count && tails.size() == count && strides.size() == count &&
                  dilations.size() == count && fresh.size() == count,
              "one weight, bias, tail, stride, dilation and fresh flag per conv");
  std::vector<Layer> layers;
  for (const int64_t op : program) {
    if (op != kConv && op != kConvTr && op != kConvTrDepthwise) continue;
    const size_t i = layers.size();
    TORCH_CHECK(i < count, "the program has more convs than weights");
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.dim() == 3 && w.scalar_type() == at::kFloat && w.is_contiguous(), "conv weight: float32 3-d");
    const c10::optional<at::Tensor> bias = biases.get(i);
    const float* b = nullptr;
    const int64_t outputs = op == kConv ? w.size(0) : op == kConvTr ? w.size(1) : w.size(0);
    if (bias && bias->defined()) {
      TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == outputs, "bias");
      b = bias->data_ptr<float>();
    }
    const at::Tensor& tail = tails[i];
    const int64_t K = w.size(2), S = strides[i];
    if (op == kConv) {
      const int64_t P = (K - 1) * dilations[i] + 1 - S;
      TORCH_CHECK(P >= 0 && tail.scalar_type() == at::kFloat && tail.is_contiguous() &&
                      tail.numel() == B * w.size(1) * P,
                  "conv tail: float32 [B, C, P]");
      bool* first = nullptr;
      const c10::optional<at::Tensor> flag = fresh.get(i);
      if (flag && flag->defined()) {
        TORCH_CHECK(flag->scalar_type() == at::kBool && flag->is_contiguous() && flag->numel() == B, "fresh: bool [B]");
        first = flag->data_ptr<bool>();
      }
      layers.push_back({false, {w.data_ptr<float>(), b, w.size(0), w.size(1), K, S, dilations[i], P,
                                tail.data_ptr<float>(), first}, {}});
    } else {
      const bool depthwise = op == kConvTrDepthwise;
      TORCH_CHECK(!depthwise || w.size(1) == 1, "depthwise transposed conv weight: [C, 1, K]");
      const int64_t P = K - S;
      TORCH_CHECK(S >= 1 && P >= 0 && tail.scalar_type() == at::kFloat && tail.is_contiguous() &&
                      tail.numel() == B * outputs * P,
                  "transposed conv partial: float32 [B, O, K - S]");
      layers.push_back({true, {}, {w.data_ptr<float>(), b, w.size(0), outputs, K, S, P, depthwise,
                                   tail.data_ptr<float>()}});
    }
  }
  TORCH_CHECK(layers.size() == count, "the program must use every conv");
  return layers;
}

// x [B, C0, N] -> [B, C_last, N * upsampling / hop]. program: Op codes; weights, biases (undefined: none), tails:
// one per CONV / CONVTR / CONVTR_DW, in program order (a conv's input tail [B, C, P], a transposed conv's partial
// overlap [B, O, K - S]); strides, dilations (1 for a transposed conv): per layer; fresh: per layer, undefined
// (zero padding before the first step; always for a transposed conv) or a bool [B] flag of the replicate pad mode
// (a fresh slot's tail is first filled with its first input sample; the flag then clears for active slots).
at::Tensor seanet_step(const at::Tensor& x_in, at::IntArrayRef program, at::TensorList weights,
                       const c10::List<c10::optional<at::Tensor>>& biases, at::TensorList tails,
                       at::IntArrayRef strides, at::IntArrayRef dilations,
                       const c10::List<c10::optional<at::Tensor>>& fresh, const c10::optional<at::Tensor>& active,
                       double alpha) {
  TORCH_CHECK(x_in.dim() == 3 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(), "x: float32 [B, C, N]");
  const int64_t B = x_in.size(0);
  TORCH_CHECK(B > 0, "empty batch");
  const std::vector<Layer> layers = make_layers(program, B, weights, biases, tails, strides, dilations, fresh);
  at::Tensor active_c;
  const bool* ap = nullptr;
  if (active && active->defined()) {
    TORCH_CHECK(active->scalar_type() == at::kBool && active->numel() == B, "active: bool [B]");
    active_c = active->contiguous();
    ap = active_c.data_ptr<bool>();
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor result;
  Buffer buffers[2];  // the activation and the next conv's output, swapped after each conv
  std::vector<Buffer> saved(program.size());  // residual inputs (PUSH); at most one per op
  for (int64_t b = 0; b < B; ++b) {
    const bool commit = !ap || ap[b];
    int64_t channels = x.size(1), steps = x.size(2), depth = 0;
    Buffer* current = &buffers[0];
    Buffer* output = &buffers[1];
    std::copy_n(x.data_ptr<float>() + b * channels * steps, channels * steps, current->resize(channels * steps));
    size_t next = 0;
    for (const int64_t op : program) {
      float* now = current->data();
      if (op == kElu) {
        elu(now, current->size(), static_cast<float>(alpha));
      } else if (op == kPush) {
        std::copy_n(now, current->size(), saved[depth++].resize(current->size()));
      } else if (op == kAdd) {
        TORCH_CHECK(depth > 0 && saved[depth - 1].size() == current->size(), "ADD without a matching PUSH");
        const float* skip = saved[--depth].data();
        for (int64_t i = 0; i < current->size(); ++i) now[i] += skip[i];
      } else if (op == kConvTr || op == kConvTrDepthwise) {
        TORCH_CHECK(next < layers.size() && layers[next].transposed, "bad program");
        const ConvTr& c = layers[next++].convtr;
        TORCH_CHECK(channels == c.C, "transposed conv input of ", channels, " channels does not fit one of ", c.C);
        transposed(c, now, steps, output->resize(c.O * steps * c.S), c.partial + b * c.O * c.P, commit);
        std::swap(current, output);
        channels = c.O;
        steps *= c.S;
      } else {
        TORCH_CHECK(op == kConv && next < layers.size() && !layers[next].transposed, "bad program");
        const Conv& c = layers[next++].conv;
        TORCH_CHECK(channels == c.C && steps % c.stride == 0, "conv input of ", channels, " channels and ", steps,
                    " steps does not fit a conv of ", c.C, " channels, stride ", c.stride);
        const int64_t T = steps / c.stride;
        float* tail = c.tail + b * c.C * c.P;
        if (c.fresh && c.fresh[b]) {
          for (int64_t ch = 0; ch < c.C; ++ch) std::fill(tail + ch * c.P, tail + (ch + 1) * c.P, now[ch * steps]);
          if (commit) c.fresh[b] = false;
        }
        convolve(c, Input{tail, now, c.P, steps}, output->resize(c.O * T), T);
        if (commit) advance_tail(tail, now, c.C, c.P, steps);
        std::swap(current, output);
        channels = c.O;
        steps = T;
      }
    }
    TORCH_CHECK(next == layers.size() && depth == 0, "the program must use every conv and close every PUSH");
    if (b == 0) result = at::empty({B, channels, steps}, x.options());
    std::copy_n(current->data(), current->size(), result.data_ptr<float>() + b * channels * steps);
  }
  return result;
}

}  // namespace

TORCH_LIBRARY(dsmcli_seanet, m) {
  m.def("step(Tensor x, int[] program, Tensor[] weights, Tensor?[] biases, Tensor[] tails, int[] strides, "
        "int[] dilations, Tensor?[] fresh, Tensor? active, float alpha) -> Tensor");
}
TORCH_LIBRARY_IMPL(dsmcli_seanet, CPU, m) { m.impl("step", &seanet_step); }
