// What the MoE kernels share (cuda_moe.cu: routing, sorting, the decode kernels, the combine; cuda_moe_gemm.cu:
// the prefill grouped GEMM): the workspace carved out of the op's scratch and the hidden's epilogue.
#pragma once
#include "kernels/cuda/cuda_common.cuh"

namespace dsv4::cuda {

struct MoeWs {
  int* offsets;  // [E + 1]
  int* active;   // [E]
  int* n_active;  // [1]
  int* perm;      // [M*K] slot ids (m*K + j) sorted by expert
  int* tile_off;  // [E + 1] first 64-row tile of each expert (tensor-core path)
  uint8_t* codes;  // the GEMM input (x for UP, then the hidden for DOWN), [M*K, max(D, I)]: e4m3 codes for the
                   // decode kernels, their bf16 values (2 bytes each) for the prefill GEMM
  float* cscale;   // their per-128 scales
  float* h;       // [M*K, I] hidden per sorted position
  float* y;       // [M*K, D] down output per slot id
  float* hs;      // shared expert: [M, I] x 2
  float* ys;      // [M, D]
};

// One hidden value from its w1 (g) and w3 (u) outputs, as the reference: each rounded to bf16 where the linears'
// outputs are, the SwiGLU clamp, SiLU(g) * u times the routing weight, then the hidden's own bf16 rounding.
__device__ __forceinline__ float moe_hidden(const DevMoe& a, float g, float u, float route_w) {
  if (a.out_bf16) {
    g = rbf16(g);
    u = rbf16(u);
  }
  if (a.swiglu_limit > 0) {
    u = clampf(u, -a.swiglu_limit, a.swiglu_limit);
    g = fminf(g, a.swiglu_limit);
  }
  const float hv = g / (1.f + expf(-g)) * u * route_w;
  return a.round_hidden ? rbf16(hv) : hv;
}

// The prefill grouped GEMM (cuda_moe_gemm.cu): FP8 activations, M > 16 rows, FP4 or 128 x 128 block-scaled FP8
// experts, 128-aligned widths. Quantizes x, runs UP (w1, w3 and the SwiGLU into w.h), quantizes the hidden, runs
// DOWN (w2 into w.y), after moe_sort_k filled w's offsets, tiles and permutation.
bool moe_gemm_fits(const DevMoe& a);
void moe_grouped_gemm(const Launch& L, const DevMoe& a, const MoeWs& w);

}  // namespace dsv4::cuda
