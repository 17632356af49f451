// Prefill FP8 linears (M > 16 rows, FP8 weights with 128 x 128 scales, FP8 activations with 1 x 128 scales) on
// FP8 tensor cores, pipelined: 128 x 128 outputs per block, K in 128-column blocks (one scale block each),
// STAGES of (A tile, B tile, their scales) in flight through cp.async, fragments by ldmatrix. Every target
// (mma.sync m16n8k32 e4m3 exists from sm_89); STAGES = 3 where a block may take ~114 KB of shared memory
// (sm_90, sm_100), 2 on sm_120/121 (99 KB). Products are promoted to fp32 per K block with the activation's and
// the weight's scales, as the reference de-quantizes; only the summation order differs from the CPU.
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/cuda_gemm.cuh"
#include "kernels/cuda/cuda_weights.cuh"

namespace dsv4::cuda {
namespace {

constexpr int kTM = 128, kTN = 128, kTK = 128, kTLd = kTK + 16;  // +16 B a row: ldmatrix rows on distinct banks
constexpr int kStageBytes = 2 * kTM * kTLd + (kTM + kTN) * 4;   // A, B, sa, sw
constexpr int kThreadsW = 512;                                   // the bf16-activation GEMM's block

// Warps as (8 / MI) (m) x 4 (n), each 16 MI x 32 outputs: MI x 4 mma tiles. MI = 2 (16 warps of 128 registers) is
// what runs; MI = 4 (8 warps, twice the fragment reuse, 255 registers) measured the same on an H200 (perf-notes v7).
template <int MI>
constexpr int gemm_threads() {
  return (8 / MI) * 4 * 32;
}
template <int STAGES, int MI>
__global__ void __launch_bounds__(gemm_threads<MI>(), 1) gemm_fp8_tc_k(const uint8_t* __restrict__ ac, const float* __restrict__ as,
                                                        int64_t M, int groups, DevWeight w, int64_t npg,
                                                        float* __restrict__ y, int64_t ldy, int out_bf16) {
  extern __shared__ __align__(16) uint8_t gsm[];
  const int64_t K = w.in, N = w.out, m0 = int64_t(blockIdx.y) * kTM, n0 = int64_t(blockIdx.x) * kTN;
  const int64_t g = n0 / npg, lda = int64_t(groups) * K, nkb = K / kTK;
  const uint8_t* ag = ac + g * K;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wm = warp >> 2, wn = warp & 3;
  const int gid = lane >> 2, tig = lane & 3;
  auto stage = [&](int s) { return gsm + size_t(s) * kStageBytes; };
  // This thread's CH 16-byte chunks of A and of B per K block (row tid / 8 + (T / 8) i, bytes 16 (tid % 8)), as
  // pointers at K block 0; rows past M or N are zero-filled.
  constexpr int T = gemm_threads<MI>(), kRowsPer = T / 8, CH = kTM / kRowsPer;
  const int q = tid & 7, r0 = tid >> 3;
  const uint8_t* asrc[CH];
  const uint8_t* bsrc[CH];
  bool aok[CH], bok[CH];
#pragma unroll
  for (int i = 0; i < CH; ++i) {
    const int r = r0 + i * kRowsPer;
    aok[i] = m0 + r < M;
    bok[i] = n0 + r < N;
    asrc[i] = aok[i] ? ag + (m0 + r) * lda + q * 16 : ac;
    bsrc[i] = bok[i] ? w.data + (n0 + r) * K + q * 16 : w.data;
  }
  // Threads [0, 128) load the activation scale of row tid, [128, 256) the weight scale of row tid - 128: an index
  // at K block 0 (the weight's scale tiles are 128 x 128, so K block kb is scale column kb).
  bool sok = false;
  int64_t sidx = 0;
  if (tid < kTM) {
    sok = m0 + tid < M;
    sidx = (m0 + tid) * (groups * nkb) + g * nkb;
  } else if (tid < kTM + kTN) {
    sok = n0 + tid - kTM < N;
    sidx = ((w.row0 + n0 + tid - kTM) >> 7) * w.scale_cols;
  }
  // One K block into stage s: the tiles by cp.async, the scales by plain stores (read after the same barrier).
  auto load = [&](int64_t kb, int s) {
    uint8_t* As = stage(s);
    uint8_t* Bs = As + kTM * kTLd;
    float* sa = reinterpret_cast<float*>(Bs + kTN * kTLd);
    float* sw = sa + kTM;
    const int64_t k0 = kb * kTK;
#pragma unroll
    for (int i = 0; i < CH; ++i) {
      const int r = r0 + i * kRowsPer;
      cp_async16(As + r * kTLd + q * 16, asrc[i] + (aok[i] ? k0 : 0), aok[i]);
      cp_async16(Bs + r * kTLd + q * 16, bsrc[i] + (bok[i] ? k0 : 0), bok[i]);
    }
    if (tid < kTM) {
      sa[tid] = sok ? as[sidx + kb] : 0.f;
    } else if (tid < kTM + kTN) {
      sw[tid - kTM] = !sok ? 0.f : w.scale_f32 ? static_cast<const float*>(w.scale)[sidx + kb]
                                              : e8m0_to_f32(static_cast<const uint8_t*>(w.scale)[sidx + kb]);
    }
  };
  float acc[MI][4][4] = {};
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nkb) load(s, s);
    cp_async_commit();
  }
  // ldmatrix addresses: A matrix q = lane / 8 covers rows (q & 1) * 8 and bytes (q >> 1) * 16 of a 16 x 32 tile;
  // B matrix q covers n rows (q >> 1) * 8 of two 8-row tiles and bytes (q & 1) * 16.
  const int lq = lane >> 3, lr = lane & 7;
  const int a_off = (wm * 16 * MI + (lq & 1) * 8 + lr) * kTLd + (lq >> 1) * 16;
  const int b_off = (wn * 32 + (lq >> 1) * 8 + lr) * kTLd + (lq & 1) * 16;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kb landed for every thread; stage kb - 1 is free
    {
      const int64_t nk = kb + STAGES - 1;
      if (nk < nkb) load(nk, int(nk % STAGES));
      cp_async_commit();
    }
    const uint8_t* As = stage(int(kb % STAGES));
    const uint8_t* Bs = As + kTM * kTLd;
    const float* sa = reinterpret_cast<const float*>(Bs + kTN * kTLd);
    const float* sw = sa + kTM;
    float blk[MI][4][4] = {};
#pragma unroll 1  // unrolled, the fragments of all four steps stay live and spill
    for (int ks = 0; ks < kTK; ks += 32) {
      uint32_t af[MI][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < MI; ++i) ldmatrix_x4(af[i], As + a_off + i * 16 * kTLd + ks);
#pragma unroll
      for (int j = 0; j < 4; j += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, Bs + b_off + j * 8 * kTLd + ks);
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_e4m3(blk[i][j], af[i], bf[j]);
    }
    float rs[MI][2], cs[4][2];  // this thread's rows' and columns' scales
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) rs[i][h] = sa[wm * 16 * MI + i * 16 + gid + h * 8];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) cs[j][h] = sw[wn * 32 + j * 8 + tig * 2 + h];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] += blk[i][j][e] * (rs[i][e >> 1] * cs[j][e & 1]);
  }
  cp_async_wait<0>();
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + wm * 16 * MI + i * 16 + gid + (e >> 1) * 8, n = n0 + wn * 32 + j * 8 + tig * 2 + (e & 1);
        if (m < M && n < N) y[m * ldy + n] = out_bf16 ? rbf16(acc[i][j][e]) : acc[i][j][e];
      }
}

template <int STAGES, int MI>
void launch(const Launch& L, const uint8_t* codes, const float* sc, int64_t M, int groups, const DevWeight& w,
            int64_t npg, float* y, int64_t ldy, int out_bf16) {
  static unsigned long long attr = 0;
  if (first_on_device(attr)) allow_max_dynamic_smem(reinterpret_cast<const void*>(gemm_fp8_tc_k<STAGES, MI>));
  DSV4_CUDA_REQUIRE(cdiv(M, kTM) < 65536, "linear on CUDA: too many rows for the FP8 GEMM's grid");
  dim3 grid(unsigned(cdiv(w.out, kTN)), unsigned(cdiv(M, kTM)));
  gemm_fp8_tc_k<STAGES, MI><<<grid, gemm_threads<MI>(), size_t(STAGES) * kStageBytes, L.stream>>>(codes, sc, M, groups, w, npg, y, ldy,
                                                                              out_bf16);
  DSV4_CUDA_LAUNCHED();
}

// ---- FP8 weights x bf16 activations (wo_a: the reference multiplies its de-quantized weights by bf16 activations).
// x is converted to a dense bf16 copy (exact: LinearCall::bf16_input); each stage holds 64 columns of A (bf16) and
// the weights' raw FP8 bytes, which the block widens to bf16 times their power-of-two scale (exact) in shared
// memory; bf16 m16n8k16 with fp32 accumulation, 16 warps of 32 x 32 outputs. No per-block promotion: the scale is
// inside the bf16 operand.
constexpr int kWK = 64, kWALd = kWK + 8, kWBLd = kWK + 16;  // A row pitch (bf16), raw B row pitch (bytes)
constexpr int kWStage = kTM * kWALd * 2 + kTN * kWBLd + kTN * 4;  // A, raw B, B scales
constexpr int kWConv = kTN * kWALd * 2;                          // widened B (bf16)

// Grid (column blocks, rows): no 64-bit division per element (the flat form took 1.4 ms for wo_a's 8K x 32K).
__global__ void to_bf16_k(const float* __restrict__ x, int64_t M, int64_t K, int64_t ldx, uint16_t* __restrict__ xb) {
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y)
    for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < K; k += int64_t(gridDim.x) * blockDim.x)
      xb[m * K + k] = f2bf(x[m * ldx + k]);
}


template <int STAGES>
__global__ void __launch_bounds__(kThreadsW, 1) gemm_w8_bf16_k(const uint16_t* __restrict__ xb, int64_t M, int groups,
                                                              DevWeight w, int64_t npg, float* __restrict__ y,
                                                              int64_t ldy, int out_bf16) {
  extern __shared__ __align__(16) uint8_t gsm[];
  const int64_t K = w.in, N = w.out, m0 = int64_t(blockIdx.y) * kTM, n0 = int64_t(blockIdx.x) * kTN;
  const int64_t g = n0 / npg, lda = int64_t(groups) * K, nkb = K / kWK;
  const uint16_t* ag = xb + g * K;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wm = warp >> 2, wn = warp & 3;
  const int gid = lane >> 2, tig = lane & 3, lq = lane >> 3, lr = lane & 7;
  uint16_t* Bc = reinterpret_cast<uint16_t*>(gsm + size_t(STAGES) * kWStage);
  auto stage = [&](int s) { return gsm + size_t(s) * kWStage; };
  // Per K block: A 128 rows x 8 chunks (2 per thread), B 128 rows x 4 chunks (1 per thread), B row scales.
  const int aq = tid & 7, ar = tid >> 3, bq = tid & 3, br = tid >> 2;
  const bool aok0 = m0 + ar < M, aok1 = m0 + ar + 64 < M, bok = n0 + br < N;
  const uint16_t* a0 = aok0 ? ag + (m0 + ar) * lda + aq * 8 : xb;
  const uint16_t* a1 = aok1 ? ag + (m0 + ar + 64) * lda + aq * 8 : xb;
  const uint8_t* b0 = bok ? w.data + (n0 + br) * K + bq * 16 : w.data;
  const bool sok = tid < kTN && n0 + tid < N;
  const int64_t sidx = sok ? ((w.row0 + n0 + tid) >> 7) * w.scale_cols : 0;
  auto load = [&](int64_t kb, int s) {
    uint16_t* As = reinterpret_cast<uint16_t*>(stage(s));
    uint8_t* Bs = reinterpret_cast<uint8_t*>(As + kTM * kWALd);
    float* sw = reinterpret_cast<float*>(Bs + kTN * kWBLd);
    const int64_t k0 = kb * kWK;
    cp_async16(As + ar * kWALd + aq * 8, a0 + (aok0 ? k0 : 0), aok0);
    cp_async16(As + (ar + 64) * kWALd + aq * 8, a1 + (aok1 ? k0 : 0), aok1);
    cp_async16(Bs + br * kWBLd + bq * 16, b0 + (bok ? k0 : 0), bok);
    if (tid < kTN)
      sw[tid] = !sok ? 0.f : e8m0_to_f32(static_cast<const uint8_t*>(w.scale)[sidx + (k0 >> 7)]);  // fits: E8M0
  };
  float acc[2][4][4] = {};
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nkb) load(s, s);
    cp_async_commit();
  }
  const int a_off = (wm * 32 + (lq & 1) * 8 + lr) * kWALd + (lq >> 1) * 8;
  const int b_off = (wn * 32 + (lq >> 1) * 8 + lr) * kWALd + (lq & 1) * 8;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kb landed; the previous block's Bc reads are done
    {
      const int64_t nk = kb + STAGES - 1;
      if (nk < nkb) load(nk, int(nk % STAGES));
      cp_async_commit();
    }
    const uint16_t* As = reinterpret_cast<const uint16_t*>(stage(int(kb % STAGES)));
    {  // widen this thread's 16 FP8 weights to bf16 x scale
      const uint8_t* Bs = reinterpret_cast<const uint8_t*>(As + kTM * kWALd);
      const float sc = reinterpret_cast<const float*>(Bs + kTN * kWBLd)[br];
      const uint4 raw = *reinterpret_cast<const uint4*>(Bs + br * kWBLd + bq * 16);
      const uint32_t wv[4] = {raw.x, raw.y, raw.z, raw.w};
      uint32_t o[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float f[4];
        e4m3x4_to_f32(wv[i], sc, f);
        o[2 * i] = __byte_perm(__float_as_uint(f[0]), __float_as_uint(f[1]), 0x7632);
        o[2 * i + 1] = __byte_perm(__float_as_uint(f[2]), __float_as_uint(f[3]), 0x7632);
      }
      uint4* dst = reinterpret_cast<uint4*>(Bc + br * kWALd + bq * 16);
      dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
      dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kWK; ks += 16) {
      uint32_t af[2][4], bfr[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) ldmatrix_x4(af[i], As + a_off + i * 16 * kWALd + ks);
#pragma unroll
      for (int j = 0; j < 2; ++j) ldmatrix_x4(bfr[j], Bc + b_off + j * 16 * kWALd + ks);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_bf16(acc[i][j], af[i], &bfr[j >> 1][(j & 1) * 2]);
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + wm * 32 + i * 16 + gid + (e >> 1) * 8, n = n0 + wn * 32 + j * 8 + tig * 2 + (e & 1);
        if (m < M && n < N) y[m * ldy + n] = out_bf16 ? rbf16(acc[i][j][e]) : acc[i][j][e];
      }
}

template <int STAGES>
void launch_w8(const Launch& L, const uint16_t* xb, int64_t M, int groups, const DevWeight& w, int64_t npg, float* y,
               int64_t ldy, int out_bf16) {
  static unsigned long long attr = 0;
  if (first_on_device(attr)) allow_max_dynamic_smem(reinterpret_cast<const void*>(gemm_w8_bf16_k<STAGES>));
  DSV4_CUDA_REQUIRE(cdiv(M, kTM) < 65536, "linear on CUDA: too many rows for the bf16 GEMM's grid");
  dim3 grid(unsigned(cdiv(w.out, kTN)), unsigned(cdiv(M, kTM)));
  gemm_w8_bf16_k<STAGES><<<grid, kThreadsW, size_t(STAGES) * kWStage + kWConv, L.stream>>>(xb, M, groups, w, npg, y,
                                                                                           ldy, out_bf16);
  DSV4_CUDA_LAUNCHED();
}

}  // namespace

bool gemm_fp8_tc_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("DSV4_CUDA_GEMM_TC");
    return !v || !*v || std::strcmp(v, "0") != 0;
  }();
  return on;
}

bool gemm_fp8_tc_fits(int64_t npg, int groups) { return groups == 1 || npg % kTN == 0; }

void gemm_fp8_tc(const Launch& L, const uint8_t* codes, const float* scales, int64_t M, int groups,
                 const DevWeight& w, int64_t npg, float* y, int64_t ldy, int out_bf16) {
  const int optin = smem_optin();
  if (optin >= 3 * kStageBytes)
    launch<3, 2>(L, codes, scales, M, groups, w, npg, y, ldy, out_bf16);
  else
    launch<2, 2>(L, codes, scales, M, groups, w, npg, y, ldy, out_bf16);
}

int64_t gemm_w8_bf16_ws_bytes(int64_t M, int groups, const DevWeight& w) { return M * int64_t(groups) * w.in * 2; }

// E8M0 scales only: the kernel widens weight x scale to bf16, exact for a power-of-two scale; an f32 block scale
// (a requantized checkpoint) would round there, so those weights take the fp32 path.
bool gemm_w8_bf16_fits(const DevWeight& w, int64_t npg, int groups) {
  return gemm_fp8_tc_enabled() && w.fmt == kFP8 && !w.scale_f32 && w.block == 128 && w.block_shift == 7 &&
         w.in % kWK == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0 && (groups == 1 || npg % kTN == 0);
}

void gemm_w8_bf16(const Launch& L, const float* x, int64_t ldx, int64_t M, int groups, const DevWeight& w, int64_t npg,
                  float* y, int64_t ldy, int out_bf16, void* ws) {
  uint16_t* xb = static_cast<uint16_t*>(ws);
  const int64_t KK = int64_t(groups) * w.in;
  to_bf16_k<<<dim3(grid1d(KK, 256), unsigned(M < 65535 ? M : 65535)), 256, 0, L.stream>>>(x, M, KK, ldx, xb);
  DSV4_CUDA_LAUNCHED();
  const int optin = smem_optin();
  if (optin >= 3 * kWStage + kWConv)
    launch_w8<3>(L, xb, M, groups, w, npg, y, ldy, out_bf16);
  else
    launch_w8<2>(L, xb, M, groups, w, npg, y, ldy, out_bf16);
}

}  // namespace dsv4::cuda
