// Fused CPU kernels for the opt-in bf16 backbone (EscModel.set_backbone_dtype), built on first use by
// esc_hf/cpu_kernels.py. ESC's Swin windows hold 16 tokens: aten's attention kernels spend most of their time on
// per-window overhead there (and run in float32 only after a conversion pass over q, k and v), so one kernel here
// reads bf16 q, k, v, computes a window's attention in float32 registers and writes bf16, with 16-lane vectors
// running across the 16 queries of a window. GCC/Clang vector extensions keep it portable: 16 floats are one
// AVX-512 register, two AVX2 ones, or four NEON ones. A second kernel adds a bf16 branch output to the float32
// residual stream in one pass.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

namespace {

constexpr int kTokens = 16;     // a 4 x 4 window
constexpr int kMaxHeadDim = 64;

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16 splat(float x) { return v16{} + x; }

inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch's float -> bfloat16 conversion; a NaN stays a NaN.
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// exp(x) for x <= 0, as softmax needs after subtracting the row maximum: Cephes' polynomial for exp(r) on
// |r| <= ln(2)/2 times 2^n, within 2 ulp. Below -80 it returns 0: the shift mask's -100 entries then cost no
// denormal arithmetic, and the sum they would join is at least 1.
inline v16 exp_nonpositive(v16 x) {
  const auto tiny = x < -80.0f;
  x = tiny ? splat(-80.0f) : x;
  const v16 magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const v16 n = (x * 1.44269504088896341f + magic) - magic;
  v16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 two_n;
  std::memcpy(&two_n, &bits, 64);
  return tiny ? splat(0.0f) : p * two_n;
}

// One (window, head): `qkv` points at the window's first token and this head's channels; `bias_t` and `mask_t`
// are [key][query] (mask_t may be null). D > 0 fixes the head dimension at compile time.
template <int D>
void attend_window(const uint16_t* qkv, int64_t token_stride, int64_t kv_offset, int dim, const float* bias_t,
                   const float* mask_t, float scale, uint16_t* out, int64_t out_stride) {
  const int d = D > 0 ? D : dim;
  v16 query_t[kMaxHeadDim];  // query_t[c][i]: channel c of query i
  float key[kTokens][kMaxHeadDim], value[kTokens][kMaxHeadDim];
  for (int i = 0; i < kTokens; ++i) {
    const uint16_t* token = qkv + i * token_stride;
    for (int c = 0; c < d; ++c) {
      query_t[c][i] = bf16_to_float(token[c]);
      key[i][c] = bf16_to_float(token[kv_offset + c]);
      value[i][c] = bf16_to_float(token[2 * kv_offset + c]);
    }
  }
  v16 weight[kTokens];  // weight[j][i]: key j, query i
  for (int j = 0; j < kTokens; ++j) {
    v16 score{};
    for (int c = 0; c < d; ++c) score += key[j][c] * query_t[c];
    v16 bias, mask{};
    std::memcpy(&bias, bias_t + j * kTokens, 64);
    if (mask_t) std::memcpy(&mask, mask_t + j * kTokens, 64);
    weight[j] = score * scale + bias + mask;
  }
  v16 row_max = weight[0];
  for (int j = 1; j < kTokens; ++j) row_max = weight[j] > row_max ? weight[j] : row_max;
  v16 total{};
  for (int j = 0; j < kTokens; ++j) {
    weight[j] = exp_nonpositive(weight[j] - row_max);
    total += weight[j];
  }
  const v16 inverse = 1.0f / total;
  v16 out_t[kMaxHeadDim];  // out_t[c][i]
  for (int c = 0; c < d; ++c) {
    v16 acc{};
    for (int j = 0; j < kTokens; ++j) acc += weight[j] * value[j][c];
    out_t[c] = acc * inverse;
  }
  for (int i = 0; i < kTokens; ++i)
    for (int c = 0; c < d; ++c) out[i * out_stride + c] = float_to_bf16(out_t[c][i]);
}

template <int D>
void attend_all(const uint16_t* qkv, uint16_t* out, const float* bias_t, const float* mask_t, int64_t windows,
                int64_t heads, int dim, float scale) {
  const int64_t channels = heads * dim, token_stride = 3 * channels;
  at::parallel_for(0, windows * heads, 64, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t w = item / heads, h = item % heads;
      attend_window<D>(qkv + w * kTokens * token_stride + h * dim, token_stride, channels, dim,
                       bias_t + h * kTokens * kTokens, mask_t ? mask_t + w * kTokens * kTokens : nullptr, scale,
                       out + w * kTokens * channels + h * dim, channels);
    }
  });
}

// [.., query, key] float32 -> contiguous [.., key, query].
at::Tensor key_major(const at::Tensor& t) { return t.to(at::kFloat).transpose(-1, -2).contiguous(); }

at::Tensor window_attention(const at::Tensor& qkv, const at::Tensor& bias, const std::optional<at::Tensor>& mask,
                            double scale) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == at::kBFloat16, "qkv must be a bf16 CPU tensor");
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(1) == kTokens && qkv.size(2) == 3,
              "qkv must be (windows, 16, 3, heads, head_dim), got ", qkv.sizes());
  const int64_t windows = qkv.size(0), heads = qkv.size(3), dim = qkv.size(4);
  TORCH_CHECK(dim >= 1 && dim <= kMaxHeadDim, "head_dim must be in [1, ", kMaxHeadDim, "], got ", dim);
  TORCH_CHECK(bias.numel() == heads * kTokens * kTokens, "bias must be (1, heads, 16, 16), got ", bias.sizes());
  const at::Tensor qkv_c = qkv.contiguous();
  const at::Tensor bias_t = key_major(bias.reshape({heads, kTokens, kTokens}));
  at::Tensor mask_t;
  if (mask.has_value()) {
    TORCH_CHECK(mask->numel() == windows * kTokens * kTokens, "mask must be (windows, 1, 16, 16), got ",
                mask->sizes());
    mask_t = key_major(mask->reshape({windows, kTokens, kTokens}));
  }
  at::Tensor out = at::empty({windows, kTokens, heads * dim}, qkv.options());
  const auto* q = reinterpret_cast<const uint16_t*>(qkv_c.data_ptr());
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  const float* b = bias_t.data_ptr<float>();
  const float* m = mask.has_value() ? mask_t.data_ptr<float>() : nullptr;
  const float s = static_cast<float>(scale);
  const int d = static_cast<int>(dim);
  switch (d) {  // ESC-Base's head dims; others take the generic loop
    case 6: attend_all<6>(q, o, b, m, windows, heads, d, s); break;
    case 8: attend_all<8>(q, o, b, m, windows, heads, d, s); break;
    case 12: attend_all<12>(q, o, b, m, windows, heads, d, s); break;
    case 15: attend_all<15>(q, o, b, m, windows, heads, d, s); break;
    case 16: attend_all<16>(q, o, b, m, windows, heads, d, s); break;
    case 24: attend_all<24>(q, o, b, m, windows, heads, d, s); break;
    default: attend_all<0>(q, o, b, m, windows, heads, d, s);
  }
  return out;
}

// x += y for the float32 residual stream and a bf16 branch output, in one pass (aten first converts y to a
// float32 temporary).
void add_bf16_(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 CPU tensor");
  TORCH_CHECK(y.device().is_cpu() && y.scalar_type() == at::kBFloat16 && y.is_contiguous() && y.numel() == x.numel(),
              "y must be a contiguous bf16 CPU tensor with as many elements as x");
  float* px = x.data_ptr<float>();
  const auto* py = reinterpret_cast<const uint16_t*>(y.data_ptr());
  at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) px[i] += bf16_to_float(py[i]);
  });
}

}  // namespace

TORCH_LIBRARY(esc_hf, m) {
  m.def("window_attention(Tensor qkv, Tensor bias, Tensor? mask, float scale) -> Tensor");
  m.def("add_bf16_(Tensor(a!) x, Tensor y) -> ()");
}

TORCH_LIBRARY_IMPL(esc_hf, CPU, m) {
  m.impl("window_attention", &window_attention);
  m.impl("add_bf16_", &add_bf16_);
}
