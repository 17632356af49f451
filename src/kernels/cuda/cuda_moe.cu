// MoE routing and the routed MoE layer as one op. Rows are sorted by expert on the device (counts, offsets, a
// compact list of the experts hit); grouped GEMV kernels then read each hit expert's weights once per 8 of its
// rows: up = w1 and w3 with the SwiGLU (clamp, routing weight) in the epilogue, down = w2 into one output row
// per (token, choice); a combine sums the choices in expert-id order (the host's order) plus the shared expert.
#include <algorithm>

#include "kernels/cuda/cuda_weights.cuh"

namespace dsv4::cuda {
namespace {

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + expf(-x)); }

// One warp per row; scores in shared memory; top-k by repeated arg-max (value desc, index asc).
constexpr int kRouteWarps = 4, kRouteMaxE = 1024;
__global__ void __launch_bounds__(kRouteWarps * 32) route_k(DevRoute a, int* err) {
  __shared__ float score[kRouteWarps][kRouteMaxE], biased[kRouteWarps][kRouteMaxE];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t m = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (m >= a.M) return;
  const float* lg = a.logits + m * a.E;
  float* sc = score[warp];
  float* bs = biased[warp];
  if (a.score_func == 2) {
    float mx = -INFINITY;
    for (int j = lane; j < a.E; j += 32) mx = fmaxf(mx, lg[j]);
    mx = warp_max(mx);
    float s = 0.f;
    for (int j = lane; j < a.E; j += 32) s += (sc[j] = expf(lg[j] - mx));
    s = warp_sum(s);
    for (int j = lane; j < a.E; j += 32) sc[j] /= s;
  } else {
    for (int j = lane; j < a.E; j += 32) {
      const float x = lg[j];
      sc[j] = a.score_func == 1 ? sigm(x) : sqrtf(x > 20.f ? x : log1pf(expf(x)));
    }
  }
  __syncwarp();
  int32_t* ex = a.experts + m * a.k;
  if (a.tid2eid) {
    const int32_t t = a.tokens[m];
    if (t < 0 || t >= a.vocab) {
      if (lane == 0) report(err, kErrTid, m, t, a.vocab);
      return;
    }
    for (int j = lane; j < a.k; j += 32) {
      const int32_t e = a.tid2eid[int64_t(t) * a.k + j];
      if (e < 0 || e >= a.E) report(err, kErrExpert, m, e, a.E);
      ex[j] = e < 0 || e >= a.E ? 0 : e;
    }
  } else {
    for (int j = lane; j < a.E; j += 32) bs[j] = sc[j] + (a.bias ? a.bias[j] : 0.f);
    __syncwarp();
    for (int c = 0; c < a.k; ++c) {
      float best = -INFINITY;
      int bi = 0x7fffffff;
      for (int j = lane; j < a.E; j += 32) {
        const float v = bs[j];
        if (v > best || (v == best && j < bi)) {
          best = v;
          bi = j;
        }
      }
#pragma unroll
      for (int o = 16; o; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
          best = ov;
          bi = oi;
        }
      }
      if (bi == 0x7fffffff) bi = 0;  // every remaining value NaN: the host's partial_sort order is unspecified too
      if (lane == 0) ex[c] = bi;
      __syncwarp();
      if (lane == 0) bs[bi] = __int_as_float(0x7fc00000);  // NaN: never selected again
      __syncwarp();
    }
  }
  __syncwarp();
  if (lane == 0) {
    float* wt = a.weights + m * a.k;
    float sum = 0.f;
    for (int j = 0; j < a.k; ++j) sum += (wt[j] = sc[ex[j]]);
    for (int j = 0; j < a.k; ++j) wt[j] = (a.normalize && a.score_func != 2 ? wt[j] / sum : wt[j]) * a.route_scale;
  }
}

// ---- MoE workspace: ints first, then float areas.
struct MoeWs {
  int* counts;   // [E]
  int* offsets;  // [E + 1]
  int* fill;     // [E]
  int* active;   // [E]
  int* n_active;  // [1]
  int* perm;      // [M*K] slot ids (m*K + j) sorted by expert
  float* xq;      // [M, D]
  float* h;       // [M*K, I] hidden per sorted position
  float* y;       // [M*K, D] down output per slot id
  float* hs;      // shared expert: [M, I] x 2
  float* ys;      // [M, D]
};

MoeWs carve(void* ws, int64_t M, int64_t K, int64_t D, int64_t I, int64_t E) {
  uint8_t* p = static_cast<uint8_t*>(ws);
  auto take = [&](int64_t bytes) {
    uint8_t* r = p;
    p += cdiv(bytes, 256) * 256;
    return r;
  };
  MoeWs w;
  w.counts = reinterpret_cast<int*>(take(E * 4));
  w.offsets = reinterpret_cast<int*>(take((E + 1) * 4));
  w.fill = reinterpret_cast<int*>(take(E * 4));
  w.active = reinterpret_cast<int*>(take(E * 4));
  w.n_active = reinterpret_cast<int*>(take(4));
  w.perm = reinterpret_cast<int*>(take(M * K * 4));
  w.xq = reinterpret_cast<float*>(take(M * D * 4));
  w.h = reinterpret_cast<float*>(take(M * K * I * 4));
  w.y = reinterpret_cast<float*>(take(M * K * D * 4));
  w.hs = reinterpret_cast<float*>(take(2 * M * I * 4));
  w.ys = reinterpret_cast<float*>(take(M * D * 4));
  return w;
}

// One block: histogram, offsets and the compact active list (expert order), then the scatter.
__global__ void __launch_bounds__(1024) moe_sort_k(const int32_t* experts, int64_t n, int E, MoeWs w, int* err) {
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    w.counts[e] = 0;
    w.fill[e] = 0;
  }
  __syncthreads();
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
    const int e = experts[s];
    if (e < 0 || e >= E) {
      report(err, kErrExpert, s, e, E);
      continue;
    }
    atomicAdd(&w.counts[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int off = 0, na = 0;
    for (int e = 0; e < E; ++e) {
      w.offsets[e] = off;
      off += w.counts[e];
      if (w.counts[e]) w.active[na++] = e;
    }
    w.offsets[E] = off;
    *w.n_active = na;
  }
  __syncthreads();
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
    const int e = experts[s];
    if (e < 0 || e >= E) continue;
    w.perm[w.offsets[e] + atomicAdd(&w.fill[e], 1)] = int(s);
  }
}

constexpr int kMoeMT = 8, kMoeKR = 2048;  // 8 rows x 2048 columns of staged input = 64 KB

// UP: block = 16 intermediate columns of one active expert; warps 0-3 run w1, warps 4-7 w3 on the same
// columns, and the epilogue applies the SwiGLU. DOWN: block = 32 output columns of w2.
template <int FMT, bool UP>
__global__ void __launch_bounds__(256) moe_gemv_k(DevMoe a, MoeWs w) {
  extern __shared__ float xs[];  // [kMoeMT][kMoeKR]
  __shared__ float gs[16][kMoeMT], us[16][kMoeMT];
  constexpr int CH = Chunk<FMT>::n, kNC = kMoeKR / CH;
  if (int(blockIdx.y) >= *w.n_active) return;
  const int e = w.active[blockIdx.y];
  const int r0 = w.offsets[e], r1 = w.offsets[e + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const DevWeight wt = a.table[int64_t(e) * 3 + (UP ? (warp < 4 ? 0 : 2) : 1)];
  const int64_t K = UP ? a.D : a.inter, N = UP ? a.inter : a.D;
  const int64_t nblk = int64_t(blockIdx.x) * (UP ? 16 : 32);
  const int64_t n0 = nblk + (UP ? (warp & 3) : warp) * 4;
  const float* src = UP ? (a.act_fp8 ? w.xq : a.x) : w.h;
  for (int rb = r0; rb < r1; rb += kMoeMT) {
    const int nv = min(kMoeMT, r1 - rb);
    float acc[4][kMoeMT];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int m = 0; m < kMoeMT; ++m) acc[r][m] = 0.f;
    for (int64_t k0 = 0; k0 < K; k0 += kMoeKR) {
      const int64_t kl = min(K, k0 + kMoeKR) - k0;
      __syncthreads();
      // Staged as [m][sub-chunk][chunk][4] (lanes = consecutive chunks read consecutive float4s); one index
      // division per row, none per element. Only the expert's nv rows: the products stop there, and at decode
      // an expert mostly has one row (staging all 8 was 8x the x traffic of the weights it multiplies).
      for (int m = 0; m < nv; ++m) {
        const float* sr = src + (UP ? int64_t(w.perm[rb + m]) / a.K : int64_t(rb + m)) * K + k0;
#pragma unroll 4
        for (int64_t k = threadIdx.x; k < kl; k += blockDim.x)
          xs[m * kMoeKR + (((k % CH) / 4) * kNC + k / CH) * 4 + (k & 3)] = sr[k];
      }
      __syncthreads();
      const int64_t nch = kl / CH;
      for (int64_t c = lane; c < nch; c += 32) {
        uint4 raw[4];
        float sc[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          if (n0 + r < N) {
            load_chunk<FMT>(wt, n0 + r, k0 + c * CH, raw[r], sc[r]);
          } else {
            raw[r] = make_uint4(0, 0, 0, 0);
            sc[r] = 0.f;
          }
        }
#pragma unroll
        for (int s = 0; s < CH / 4; ++s) {
          float wv[4][4];
#pragma unroll
          for (int r = 0; r < 4; ++r) decode4<FMT>(raw[r], s, sc[r], wv[r]);
#pragma unroll
          for (int m = 0; m < kMoeMT; ++m) {
            if (m >= nv) break;  // warp-uniform: rows this expert does not have
            const float4 xv = *reinterpret_cast<const float4*>(&xs[m * kMoeKR + (s * kNC + c) * 4]);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
              acc[r][m] += wv[r][0] * xv.x;
              acc[r][m] += wv[r][1] * xv.y;
              acc[r][m] += wv[r][2] * xv.z;
              acc[r][m] += wv[r][3] * xv.w;
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int m = 0; m < kMoeMT; ++m) {
        float v = warp_sum(acc[r][m]);
        if (a.out_bf16) v = rbf16(v);
        const int64_t n = n0 + r;
        if (lane == 0 && rb + m < r1 && n < N) {
          if (UP) {
            (warp < 4 ? gs : us)[(warp & 3) * 4 + r][m] = v;
          } else {
            w.y[int64_t(w.perm[rb + m]) * a.D + n] = v;
          }
        }
      }
    if (UP) {
      __syncthreads();
      if (threadIdx.x < 16 * kMoeMT) {
        const int nn = threadIdx.x / kMoeMT, m = threadIdx.x % kMoeMT;
        const int64_t n = nblk + nn;
        if (rb + m < r1 && n < N) {
          float g = gs[nn][m], u = us[nn][m];
          if (a.swiglu_limit > 0) {
            u = clampf(u, -a.swiglu_limit, a.swiglu_limit);
            g = fminf(g, a.swiglu_limit);
          }
          float hv = g / (1.f + expf(-g)) * u * a.weights[w.perm[rb + m]];
          if (a.round_hidden) hv = rbf16(hv);
          w.h[int64_t(rb + m) * a.inter + n] = hv;
        }
      }
    }
  }
}

__global__ void swiglu_k(const float* g, const float* u, int64_t n, float limit, bool round, float* h) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float gv = g[i], uv = u[i];
    if (limit > 0) {
      uv = clampf(uv, -limit, limit);
      gv = fminf(gv, limit);
    }
    float hv = gv / (1.f + expf(-gv)) * uv * 1.f;
    h[i] = round ? rbf16(hv) : hv;
  }
}

// out[m] = sum over choices in expert-id order (stable for repeated ids) + shared, then the optional bf16 round.
__global__ void moe_combine_k(DevMoe a, MoeWs w, bool has_shared) {
  const int64_t total = a.M * a.D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / a.D, d = i % a.D;
    int order[16];
    const int K = int(a.K);
    for (int j = 0; j < K; ++j) order[j] = j;
    for (int j = 1; j < K; ++j) {  // insertion sort by expert id, stable
      const int o = order[j], eo = a.experts[m * K + o];
      int q = j - 1;
      while (q >= 0 && a.experts[m * K + order[q]] > eo) {
        order[q + 1] = order[q];
        --q;
      }
      order[q + 1] = o;
    }
    float acc = 0.f;
    for (int j = 0; j < K; ++j) acc += w.y[(m * K + order[j]) * a.D + d];
    float v = has_shared ? acc + w.ys[i] : acc;
    a.out[i] = a.round_out ? rbf16(v) : v;
  }
}

template <int FMT>
void launch_grouped(const Launch& L, const DevMoe& a, const MoeWs& w, unsigned max_active) {
  // An expert gets at most one row per token (a token picks distinct experts), so min(8, M) staged rows
  // suffice: 8 KB instead of 64 KB at decode B = 1, and more blocks per SM to keep weight loads in flight.
  const size_t sm_max = size_t(kMoeMT) * kMoeKR * 4, sm = size_t(std::min<int64_t>(kMoeMT, a.M)) * kMoeKR * 4;
  static unsigned long long attr = 0;
  if (first_on_device(attr)) {
    DSV4_CUDA_CHECK(cudaFuncSetAttribute(moe_gemv_k<FMT, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm_max)));
    DSV4_CUDA_CHECK(cudaFuncSetAttribute(moe_gemv_k<FMT, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sm_max)));
  }
  moe_gemv_k<FMT, true><<<dim3(unsigned(cdiv(a.inter, 16)), max_active), 256, sm, L.stream>>>(a, w);
  DSV4_CUDA_LAUNCHED();
  if (a.act_fp8) quantize_rows_fp8(L, w.h, a.M * a.K, a.inter, a.inter, w.h, nullptr, nullptr);
  moe_gemv_k<FMT, false><<<dim3(unsigned(cdiv(a.D, 32)), max_active), 256, sm, L.stream>>>(a, w);
  DSV4_CUDA_LAUNCHED();
}

}  // namespace

void route(const Launch& L, const DevRoute& a) {
  if (!a.M) return;
  DSV4_CUDA_REQUIRE(a.E <= kRouteMaxE && a.k <= a.E, "route on CUDA: more than 1024 experts, or k > E");
  route_k<<<unsigned(cdiv(a.M, kRouteWarps)), kRouteWarps * 32, 0, L.stream>>>(a, L.err);
  DSV4_CUDA_LAUNCHED();
}

int64_t moe_ws_bytes(int64_t M, int64_t K, int64_t D, int64_t I, int64_t E, int) {
  auto r = [](int64_t b) { return cdiv(b, 256) * 256; };
  return r(E * 4) * 4 + r(4) + r(M * K * 4) + r(M * D * 4) + r(M * K * I * 4) + r(M * K * D * 4) + r(2 * M * I * 4) +
         r(M * D * 4) + 256;
}

void moe(const Launch& L, const DevMoe& a, void* ws, void* lin_ws) {
  if (!a.M) return;
  DSV4_CUDA_REQUIRE(a.K <= 16, "moe on CUDA: more than 16 experts per token");
  const MoeWs w = carve(ws, a.M, a.K, a.D, a.inter, a.E);
  moe_sort_k<<<1, 1024, 0, L.stream>>>(a.experts, a.M * a.K, int(a.E), w, L.err);
  DSV4_CUDA_LAUNCHED();
  const bool quant = a.act_fp8 && (a.w1.fmt == kFP8 || a.w1.fmt == kFP4);
  DevMoe b = a;
  b.act_fp8 = quant;
  if (quant) quantize_rows_fp8(L, a.x, a.M, a.D, a.D, w.xq, nullptr, nullptr);
  const unsigned max_active = unsigned(a.M * a.K < a.E ? a.M * a.K : a.E);
  switch (a.w1.fmt) {
    case kF32: launch_grouped<kF32>(L, b, w, max_active); break;
    case kBF16: launch_grouped<kBF16>(L, b, w, max_active); break;
    case kFP8: launch_grouped<kFP8>(L, b, w, max_active); break;
    default: launch_grouped<kFP4>(L, b, w, max_active); break;
  }
  if (a.shared) {
    LinearCall c;
    c.M = a.M;
    c.act_fp8 = a.act_fp8;
    c.out_bf16 = a.out_bf16;
    c.x = a.x;
    c.ldx = a.D;
    c.w = a.shared[0];
    c.y = w.hs;
    c.ldy = a.inter;
    linear(L, c, lin_ws);
    c.w = a.shared[2];
    c.y = w.hs + a.M * a.inter;
    linear(L, c, lin_ws);
    swiglu_k<<<grid1d(a.M * a.inter, 256), 256, 0, L.stream>>>(w.hs, w.hs + a.M * a.inter, a.M * a.inter,
                                                                 a.swiglu_limit, a.round_hidden, w.hs);
    DSV4_CUDA_LAUNCHED();
    c.x = w.hs;
    c.ldx = a.inter;
    c.w = a.shared[1];
    c.y = w.ys;
    c.ldy = a.D;
    linear(L, c, lin_ws);
  }
  moe_combine_k<<<grid1d(a.M * a.D, 256), 256, 0, L.stream>>>(a, w, a.shared != nullptr);
  DSV4_CUDA_LAUNCHED();
}

}  // namespace dsv4::cuda
