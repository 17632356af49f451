// The prefill FP8 GEMM on tensor cores (cuda_gemm.cu), called by linear() for M > 16.
#pragma once
#include "kernels/cuda/cuda_kernels.h"

namespace dsv4::cuda {

// DSV4_CUDA_GEMM_TC=0 (read once) falls back to the unpipelined 64 x 128 kernel, for A/B runs on a device.
bool gemm_fp8_tc_enabled();
// Grouped weights need each 128-row output tile inside one group.
bool gemm_fp8_tc_fits(int64_t npg, int groups);
// y[M, N] = codes[M, groups x K] x W^T, codes with 1 x 128 scales [M, groups x K / 128], W FP8 with 128 x 128
// scales; K a multiple of 128.
void gemm_fp8_tc(const Launch& L, const uint8_t* codes, const float* scales, int64_t M, int groups,
                 const DevWeight& w, int64_t npg, float* y, int64_t ldy, int out_bf16);

// FP8 weights (128 x 128 scales) x activations that are bf16 values (LinearCall::bf16_input), M > 16, on bf16
// tensor cores; ws: gemm_w8_bf16_ws_bytes (the dense bf16 copy of x).
bool gemm_w8_bf16_fits(const DevWeight& w, int64_t npg, int groups);
int64_t gemm_w8_bf16_ws_bytes(int64_t M, int groups, const DevWeight& w);
void gemm_w8_bf16(const Launch& L, const float* x, int64_t ldx, int64_t M, int groups, const DevWeight& w, int64_t npg,
                  float* y, int64_t ldy, int out_bf16, void* ws);

}  // namespace dsv4::cuda
