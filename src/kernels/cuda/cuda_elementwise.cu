// Row and elementwise ops: embed, rms_norm, rope, the rounding simulations, the KV codec round trip, gathers
// and the mHC sites. Memory-bound one-pass kernels; per-row reductions use one block per row.
#include "kernels/cuda/cuda_common.cuh"

namespace dsv4::cuda {
namespace {

__global__ void embed_k(const int32_t* tok, int64_t M, const void* table, int bf16, int64_t V, int64_t D, int hc,
                        float* X, int* err) {
  const int64_t n = M * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / D, d = i % D;
    const int32_t t = tok[m];
    if (t < 0 || t >= V) {
      report(err, kErrToken, m, t, V);
      continue;
    }
    const float v = bf16 ? bf2f(static_cast<const uint16_t*>(table)[int64_t(t) * D + d])
                         : static_cast<const float*>(table)[int64_t(t) * D + d];
    for (int h = 0; h < hc; ++h) X[(m * hc + h) * D + d] = v;
  }
}

__global__ void rms_norm_k(const float* x, int64_t D, const float* w, float eps, float* y) {
  __shared__ float sh[32];
  const float* xr = x + blockIdx.x * D;
  float* yr = y + blockIdx.x * D;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  const float r = 1.f / sqrtf(ss / float(D) + eps);
  __syncthreads();  // x == y: every read of the sum above is done
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = w ? xr[i] * r * w[i] : xr[i] * r;
}

// One thread per (row, pair): the angle in double as the host, then every head of the row.
__global__ void rope_k(float* x, int64_t M, int64_t H, int64_t hd, const int32_t* pos, const void* freqs, int f64,
                       int64_t half, int inverse) {
  const int64_t n = M * half;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = t / half, i = t % half;
    const double f = f64 ? static_cast<const double*>(freqs)[i] : double(static_cast<const float*>(freqs)[i]);
    const double ang = double(pos[m]) * f;
    const float c = float(cos(ang)), s0 = float(sin(ang)), s = inverse ? -s0 : s0;
    for (int64_t h = 0; h < H; ++h) {
      float* v = x + (m * H + h) * hd + (hd - 2 * half) + 2 * i;
      const float re = v[0], im = v[1];
      v[0] = re * c - im * s;
      v[1] = re * s + im * c;
    }
  }
}

__global__ void round_bf16_k(float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = rbf16(x[i]);
}
__global__ void scale_k(float* x, int64_t n, float a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= a;
}

// One warp per block of values (quant.cpp fp8_roundtrip on each row's prefix).
__global__ void fp8_rt_k(float* x, int64_t rows, int64_t row, int64_t prefix, int64_t block) {
  const int64_t nb = (prefix + block - 1) / block, total = rows * nb;
  const int lane = threadIdx.x & 31;
  for (int64_t wb = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; wb < total;
       wb += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const int64_t r = wb / nb, b = (wb % nb) * block, e = min(prefix, b + block);
    float* v = x + r * row;
    float amax = 0.f;
    for (int64_t i = b + lane; i < e; i += 32) amax = amax_step(amax, v[i]);
    const float s = pow2_scale(warp_max(amax), 448.f, 1e-4f);
    for (int64_t i = b + lane; i < e; i += 32) v[i] = fp8_rt(v[i], s);
  }
}

// One block per vector: the Sylvester butterflies in shared memory (each stage's sums are independent, so the
// values are the host's exactly), the 1/sqrt(n) factor, then the FP4 round trip per 32.
__global__ void hadamard_fp4_k(float* x, int64_t dim, float norm) {
  extern __shared__ float v[];
  float* g = x + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) v[i] = g[i];
  __syncthreads();
  for (int64_t h = 1; h < dim; h *= 2) {
    for (int64_t p = threadIdx.x; p < dim / 2; p += blockDim.x) {
      const int64_t j = (p / h) * 2 * h + p % h;
      const float a = v[j], b = v[j + h];
      v[j] = a + b;
      v[j + h] = a - b;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) v[i] *= norm;
  __syncthreads();
  const float amin = 6.f * 1.1754943508222875e-38f;  // 6 * 2^-126
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int64_t b = int64_t(w) * 32; b < dim; b += int64_t(nw) * 32) {
    const int64_t i = b + lane;
    const float xv = i < dim ? v[i] : 0.f;
    const float s = pow2_scale(warp_max(i < dim ? fabsf(xv) : 0.f), 6.f, amin);
    if (i < dim) g[i] = e2m1_to_f32(f32_to_e2m1(clampf(xv / s, -6.f, 6.f))) * s;
  }
}

// One warp per row: encode into shared memory, decode back.
__global__ void kv_rt_k(float* x, int64_t rows, DevCodec c) {
  extern __shared__ uint8_t kvbuf[];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x >> 5) + w;
  if (r >= rows) return;
  uint8_t* b = kvbuf + int64_t(w) * ((c.bytes + 15) / 16 * 16);
  float* v = x + r * c.dim;
  codec_encode_warp(c, v, b, lane);
  __syncwarp();
  for (int i = lane; i < c.dim; i += 32) v[i] = codec_decode(c, b, i);
}

__global__ void gather_k(const uint8_t* x, int64_t x_rows, int64_t row_bytes, const int32_t* rows, int64_t n,
                         uint8_t* out, int* err) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int32_t s = rows[r];
    if (s < 0 || s >= x_rows) {
      if (threadIdx.x == 0) report(err, kErrRow, r, s, x_rows);
      continue;
    }
    const uint8_t* src = x + int64_t(s) * row_bytes;
    uint8_t* dst = out + r * row_bytes;
    if (row_bytes % 16 == 0 && (reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) % 16 == 0) {
      for (int64_t i = threadIdx.x; i < row_bytes / 16; i += blockDim.x)
        reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
    } else {
      for (int64_t i = threadIdx.x; i < row_bytes; i += blockDim.x) dst[i] = src[i];
    }
  }
}

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + expf(-x)); }

// mHC: one block per row. Every thread keeps partial dots for all `rows` mixes (<= 32), reduced once.
constexpr int kHcMaxRows = 32;
template <bool kHead>
__global__ void __launch_bounds__(256) hc_k(const float* X, DevHc p, float* y, float* post, float* comb) {
  __shared__ float red[kHcMaxRows + 1][8];
  __shared__ float mix[kHcMaxRows + 1];
  __shared__ float pre[16];
  const int hc = p.hc, rows = kHead ? hc : (2 + hc) * hc;
  const int64_t flat = int64_t(hc) * p.D, m = blockIdx.x;
  const float* xf = X + m * flat;
  float acc[kHcMaxRows + 1];
#pragma unroll
  for (int r = 0; r <= kHcMaxRows; ++r) acc[r] = 0.f;
  for (int64_t i = threadIdx.x; i < flat; i += blockDim.x) {
    const float xv = xf[i];
    acc[kHcMaxRows] += xv * xv;
#pragma unroll
    for (int r = 0; r < kHcMaxRows; ++r)
      if (r < rows) acc[r] += p.fn[int64_t(r) * flat + i] * xv;
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r <= kHcMaxRows; ++r) {
    const float s = warp_sum(acc[r]);
    if (lane == 0) red[r][w] = s;
  }
  __syncthreads();
  if (threadIdx.x <= kHcMaxRows) {
    float s = 0.f;
    for (int k = 0; k < int(blockDim.x >> 5); ++k) s += red[threadIdx.x][k];
    mix[threadIdx.x] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // The tiny scalar part in one thread, in the host's order.
    const float rs = 1.f / sqrtf(mix[kHcMaxRows] / float(flat) + p.norm_eps);
    for (int h = 0; h < hc; ++h) pre[h] = sigm(mix[h] * rs * p.scale[0] + p.base[h]) + p.hc_eps;
    if (!kHead) {
      for (int h = 0; h < hc; ++h) post[m * hc + h] = 2.f * sigm(mix[hc + h] * rs * p.scale[1] + p.base[hc + h]);
      float C[16 * 16];
      for (int j = 0; j < hc; ++j) {
        float mx = -INFINITY;
        for (int k = 0; k < hc; ++k) {
          C[j * hc + k] = mix[2 * hc + j * hc + k] * rs * p.scale[2] + p.base[2 * hc + j * hc + k];
          mx = fmaxf(mx, C[j * hc + k]);
        }
        float s = 0;
        for (int k = 0; k < hc; ++k) s += (C[j * hc + k] = expf(C[j * hc + k] - mx));
        for (int k = 0; k < hc; ++k) C[j * hc + k] = C[j * hc + k] / s + p.hc_eps;
      }
      for (int it = 0; it < (p.iters > 1 ? p.iters : 1); ++it) {  // the host always does one column pass
        if (it > 0)
          for (int j = 0; j < hc; ++j) {
            float s = 0;
            for (int k = 0; k < hc; ++k) s += C[j * hc + k];
            for (int k = 0; k < hc; ++k) C[j * hc + k] /= (s + p.hc_eps);
          }
        for (int k = 0; k < hc; ++k) {
          float s = 0;
          for (int j = 0; j < hc; ++j) s += C[j * hc + k];
          for (int j = 0; j < hc; ++j) C[j * hc + k] /= (s + p.hc_eps);
        }
      }
      for (int i = 0; i < hc * hc; ++i) comb[m * hc * hc + i] = C[i];
    }
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < p.D; d += blockDim.x) {
    float a = 0;
    for (int h = 0; h < hc; ++h) a += pre[h] * xf[h * p.D + d];
    y[m * p.D + d] = a;
  }
}

__global__ void hc_post_k(const float* y, const float* X, const float* post, const float* comb, int64_t M, int hc,
                          int64_t D, float* Xout) {
  const int64_t n = M * hc * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i % D, k = (i / D) % hc, m = i / (D * hc);
    const float* C = comb + m * hc * hc;
    float o = post[m * hc + k] * y[m * D + d];
    for (int j = 0; j < hc; ++j) o += C[j * hc + k] * X[(m * hc + j) * D + d];
    Xout[i] = o;
  }
}

}  // namespace

void embed(const Launch& L, const int32_t* tokens, int64_t M, const void* table, bool table_bf16, int64_t V,
           int64_t D, int hc, float* X) {
  if (M * D == 0) return;
  embed_k<<<grid1d(M * D, 256), 256, 0, L.stream>>>(tokens, M, table, table_bf16, V, D, hc, X, L.err);
  DSV4_CUDA_LAUNCHED();
}
void rms_norm(const Launch& L, const float* x, int64_t rows, int64_t D, const float* w, float eps, float* y) {
  if (rows == 0) return;
  DSV4_CUDA_REQUIRE(rows < (1LL << 31), "rms_norm: too many rows");
  rms_norm_k<<<unsigned(rows), D >= 1024 ? 512 : 128, 0, L.stream>>>(x, D, w, eps, y);
  DSV4_CUDA_LAUNCHED();
}
void rope(const Launch& L, float* x, int64_t M, int64_t H, int64_t hd, const int32_t* pos, const void* freqs,
          bool f64, int64_t half, bool inverse) {
  if (M * half == 0) return;
  rope_k<<<grid1d(M * half, 256), 256, 0, L.stream>>>(x, M, H, hd, pos, freqs, f64, half, inverse);
  DSV4_CUDA_LAUNCHED();
}
void round_bf16(const Launch& L, float* x, int64_t n) {
  if (!n) return;
  round_bf16_k<<<grid1d(n, 256), 256, 0, L.stream>>>(x, n);
  DSV4_CUDA_LAUNCHED();
}
void scale(const Launch& L, float* x, int64_t n, float a) {
  if (!n) return;
  scale_k<<<grid1d(n, 256), 256, 0, L.stream>>>(x, n, a);
  DSV4_CUDA_LAUNCHED();
}
void fp8_roundtrip(const Launch& L, float* x, int64_t rows, int64_t row, int64_t prefix, int64_t block) {
  if (!rows || !prefix) return;
  const int64_t warps = rows * cdiv(prefix, block);
  fp8_rt_k<<<grid1d(warps * 32, 256), 256, 0, L.stream>>>(x, rows, row, prefix, block);
  DSV4_CUDA_LAUNCHED();
}
void hadamard_fp4(const Launch& L, float* x, int64_t vecs, int64_t dim, float norm) {
  if (!vecs) return;
  DSV4_CUDA_REQUIRE(dim <= 8192 && vecs < (1LL << 31), "hadamard_fp4: vector too long");
  hadamard_fp4_k<<<unsigned(vecs), 128, size_t(dim) * 4, L.stream>>>(x, dim, norm);
  DSV4_CUDA_LAUNCHED();
}
void kv_roundtrip(const Launch& L, float* x, int64_t rows, const DevCodec& c) {
  if (!rows) return;
  const int wpb = 4;
  const size_t sm = size_t(wpb) * size_t((c.bytes + 15) / 16 * 16);
  DSV4_CUDA_REQUIRE(sm <= 48 * 1024, "kv_roundtrip: vector too long");
  kv_rt_k<<<unsigned(cdiv(rows, wpb)), 32 * wpb, sm, L.stream>>>(x, rows, c);
  DSV4_CUDA_LAUNCHED();
}
void gather_rows(const Launch& L, const uint8_t* x, int64_t x_rows, int64_t row_bytes, const int32_t* rows, int64_t n,
                 uint8_t* out) {
  if (!n || !row_bytes) return;
  gather_k<<<unsigned(n < 65535 ? n : 65535), 128, 0, L.stream>>>(x, x_rows, row_bytes, rows, n, out, L.err);
  DSV4_CUDA_LAUNCHED();
}
void hc_pre(const Launch& L, const float* X, int64_t M, const DevHc& p, float* y, float* post, float* comb) {
  if (!M) return;
  DSV4_CUDA_REQUIRE((2 + p.hc) * p.hc <= kHcMaxRows && p.hc <= 16, "hc_pre: hc too large");
  hc_k<false><<<unsigned(M), 256, 0, L.stream>>>(X, p, y, post, comb);
  DSV4_CUDA_LAUNCHED();
}
void hc_head(const Launch& L, const float* X, int64_t M, const DevHc& p, float* y) {
  if (!M) return;
  DSV4_CUDA_REQUIRE(p.hc <= 16, "hc_head: hc too large");
  hc_k<true><<<unsigned(M), 256, 0, L.stream>>>(X, p, y, nullptr, nullptr);
  DSV4_CUDA_LAUNCHED();
}
void hc_post(const Launch& L, const float* y, const float* X, const float* post, const float* comb, int64_t M, int hc,
             int64_t D, float* Xout) {
  if (!M) return;
  hc_post_k<<<grid1d(M * hc * D, 256), 256, 0, L.stream>>>(y, X, post, comb, M, hc, D, Xout);
  DSV4_CUDA_LAUNCHED();
}

}  // namespace dsv4::cuda
