// Prefill MoE (FP8 activations, M > 16 rows; FP4 experts from M > 64, where the decode kernel stops): the grouped
// GEMM over rows sorted by expert, on bf16 tensor cores (mma.sync m16n8k16, native on every target).
// Block = one 64-row tile of one expert's sorted rows x 128 weight rows: UP takes 64 columns of w1 and the same 64
// of w3 (the SwiGLU in registers), DOWN 128 columns of w2. K in 128-column blocks, kStages of (activations, raw
// weight bytes, weight scales) in flight through cp.async, fragments by ldmatrix.
//
// Why bf16 and not FP8 mma: on sm_90 `mma.sync ... e4m3` is not a hardware instruction; ptxas emulates it by
// converting both fragments to f16 in every warp for every mma (CUTLASS#1986), and the v2 kernel measured
// ALU-bound at 63% issue (ncu) with the tensor pipe mostly idle. Here every operand is exact in bf16 and carries
// its scale: the activations are the reference's FP8 round-trip values (an e4m3 code times a power of two;
// quantize_fp8_bf16 writes them once), the weights e2m1 / e4m3 values times their E8M0 scale, widened once per K
// block per block in shared memory (exact, except FP8 weights under E8M0 scales <= 2^-125, whose smallest values
// fall below bf16's subnormals). Products are exact in fp32, nothing is promoted per block, and the sums differ
// from the CPU's in order (and in the tensor cores' fp32 accumulation).
#include <algorithm>

#include "kernels/cuda/cuda_moe.cuh"
#include "kernels/cuda/cuda_weights.cuh"

namespace dsv4::cuda {
namespace {

constexpr int kStages = 2, kThreads = 256;
constexpr int kALd = kMmaBK * 2 + 16;    // bf16 row pitch in bytes (+16: ldmatrix rows on distinct banks)
constexpr int kRawLd = kMmaBK / 2 + 16;  // raw FP4 row pitch in bytes

template <int FMT>
struct StageLayout {  // byte offsets inside one stage; every area 16-byte aligned
  static constexpr int a = 0;                                                // A bf16 [BM][kALd]
  static constexpr int b = a + kMmaBM * kALd;                                // B raw: FP4 [BN][kRawLd], FP8 [BN][kMmaLd]
  static constexpr int sb = b + kMmaBN * (FMT == kFP4 ? kRawLd : kMmaLd);  // B scales: 4 E8M0 bytes / a float per row
  static constexpr int bytes = sb + kMmaBN * 4;
  static constexpr int total = kStages * bytes + kMmaBN * kALd;  // + the widened B tile (bf16)
};

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  const __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
}
// 2^(e - 127) as a pair of bf16 (E8M0 e; 0 is 2^-127, a bf16 subnormal; 255 NaN).
__device__ __forceinline__ uint32_t e8m0_bf16x2(uint32_t e) {
  const uint32_t b = e == 0 ? 0x0040u : e == 255 ? 0x7fc0u : e << 7;
  return b | (b << 16);
}
// 4 e2m1 values (16 bits of nibbles) -> 4 bf16 in two words: the low and high bytes of each magnitude's bf16 by
// byte permutes (0, .5, 1, 1.5, 2, 3, 4, 6 = 0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0), the
// sign into the high byte, interleaved, times the scale (exact: a power of two).
__device__ __forceinline__ void e2m1x4_to_bf16x4(uint32_t nibbles16, uint32_t scale2, uint32_t& w0, uint32_t& w1) {
  const uint32_t m = nibbles16 & 0x7777u;
  const uint32_t lo = __byte_perm(0xc0800000u, 0xc0804000u, m);
  const uint32_t hi = __byte_perm(0x3f3f3f00u, 0x40404040u, m) | __byte_perm(0u, 0x80808080u, (nibbles16 >> 1) & 0x4444u);
  w0 = bf16x2_mul(__byte_perm(lo, hi, 0x5140u), scale2);
  w1 = bf16x2_mul(__byte_perm(lo, hi, 0x7362u), scale2);
}

// Widens stage's raw weight tile into Bw (bf16, [BN][kALd]). FP4: this thread's two (row, 32-column group)
// pieces, rows tid % 8 + 8 (tid / 32) + 64 i, group (tid / 8) % 4: the 8 threads of a 16-byte store phase take 8
// rows, so their stores (and raw reads) fall on distinct banks. FP8 (E8M0 block scales): four 16-byte chunks,
// rows tid / 8 + 32 i.
template <int FMT>
__device__ __forceinline__ void widen_b(const uint8_t* raw, const uint8_t* rsc, uint8_t* Bw) {
  const int tid = int(threadIdx.x);
  if constexpr (FMT == kFP4) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = (tid & 7) + 8 * (tid >> 5) + 64 * i, g = (tid >> 3) & 3;
      const uint32_t s2 = e8m0_bf16x2(rsc[row * 4 + g]);
      const uint4 v = *reinterpret_cast<const uint4*>(raw + row * kRawLd + g * 16);
      const uint32_t r[4] = {v.x, v.y, v.z, v.w};
      uint32_t o[16];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        e2m1x4_to_bf16x4(r[q] & 0xffffu, s2, o[4 * q], o[4 * q + 1]);
        e2m1x4_to_bf16x4(r[q] >> 16, s2, o[4 * q + 2], o[4 * q + 3]);
      }
      uint4* dst = reinterpret_cast<uint4*>(Bw + row * kALd + g * 64);
#pragma unroll
      for (int q = 0; q < 4; ++q) dst[q] = make_uint4(o[4 * q], o[4 * q + 1], o[4 * q + 2], o[4 * q + 3]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = (tid >> 3) + 32 * i, c = tid & 7;
      const uint32_t s2 = e8m0_bf16x2(rsc[row * 4]);  // the row's E8M0 byte, stored as the low byte of its word
      const uint4 v = *reinterpret_cast<const uint4*>(raw + row * kMmaLd + c * 16);
      const uint32_t r[4] = {v.x, v.y, v.z, v.w};
      uint32_t o[8];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        float f[4];
        e4m3x4_to_f32(r[q], 1.f, f);
        o[2 * q] = bf16x2_mul(pack_bf16(f[0], f[1]), s2);
        o[2 * q + 1] = bf16x2_mul(pack_bf16(f[2], f[3]), s2);
      }
      uint4* dst = reinterpret_cast<uint4*>(Bw + row * kALd + c * 32);
      dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
      dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
    }
  }
}

template <int FMT, bool UP>
__global__ void __launch_bounds__(kThreads, 2) moe_gemm_k(DevMoe a, MoeWs w) {
  using SL = StageLayout<FMT>;
  extern __shared__ __align__(16) uint8_t gsm[];
  __shared__ int src_row[kMmaBM];
  const int tile = int(blockIdx.y);
  if (tile >= w.tile_off[a.E]) return;
  int lo = 0, hi = int(a.E);  // the expert whose tiles hold this one: tile_off[e] <= tile < tile_off[e + 1]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (w.tile_off[mid] <= tile) lo = mid; else hi = mid;
  }
  const int e = lo, rb = w.offsets[e] + (tile - w.tile_off[e]) * kMmaBM, r1 = w.offsets[e + 1];
  const int64_t K = UP ? a.D : a.inter, N = UP ? a.inter : a.D, nkb = K / kMmaBK;
  const int64_t n0 = int64_t(blockIdx.x) * (UP ? kMmaBN / 2 : kMmaBN);
  const DevWeight* tw = a.table + int64_t(e) * 3;
  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, wm = warp >> 2, wn = warp & 3;
  const int gid = lane >> 2, tig = lane & 3, lq = lane >> 3, lr = lane & 7;
  if (tid < kMmaBM) {
    const int r = rb + tid;
    src_row[tid] = r < r1 ? (UP ? int(int64_t(w.perm[r]) / a.K) : r) : -1;
  }
  __syncthreads();
  // B tile row b -> (weight, row): UP rows 0-63 are w1's n0.., rows 64-127 w3's same rows; DOWN w2's n0 + b.
  auto brow = [&](int b, const DevWeight*& wt) -> int64_t {
    wt = UP ? &tw[b < 64 ? 0 : 2] : &tw[1];
    return n0 + (UP ? (b & 63) : b);
  };
  // This thread's copies per K block, as sources at K block 0 (a false predicate zero-fills): A (bf16, 256 B a
  // row) rows tid / 16 + 16 i, chunk tid % 16; FP4 B rows tid / 4 + 64 i, chunk tid % 4 (FP8: rows tid / 8 + 32 i,
  // chunk tid % 8); threads < 128 the weight scales of B row tid.
  const uint16_t* xa = reinterpret_cast<const uint16_t*>(w.codes);
  const uint8_t* asrc[4];
  bool aok[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int sr = src_row[(tid >> 4) + 16 * i];
    aok[i] = sr >= 0;
    asrc[i] = reinterpret_cast<const uint8_t*>(aok[i] ? xa + int64_t(sr) * K : xa) + (tid & 15) * 16;
  }
  constexpr int kBCh = FMT == kFP4 ? 2 : 4;
  const uint8_t* bsrc[kBCh];
  bool bok[kBCh];
#pragma unroll
  for (int i = 0; i < kBCh; ++i) {
    const DevWeight* wt;
    const int b = FMT == kFP4 ? (tid >> 2) + 64 * i : (tid >> 3) + 32 * i;
    const int64_t n = brow(b, wt);
    bok[i] = n < N;
    bsrc[i] = !bok[i] ? wt->data : FMT == kFP4 ? wt->data + n * (K / 2) + (tid & 3) * 16 : wt->data + n * K + (tid & 7) * 16;
  }
  const DevWeight* swt = nullptr;
  int64_t sn = 0;
  if (tid < kMmaBN) sn = brow(tid, swt);
  const bool sok = tid < kMmaBN && sn < N;
  const uint8_t* ssrc = nullptr;  // the row's E8M0 scales at K block 0 (FP4: 4 per K block; FP8: 1)
  if (tid < kMmaBN) {
    ssrc = static_cast<const uint8_t*>(swt->scale);
    if (sok) ssrc += FMT == kFP4 ? sn * swt->scale_cols : ((swt->row0 + sn) >> 7) * swt->scale_cols;
  }
  auto stage = [&](int s) { return gsm + size_t(s) * SL::bytes; };
  auto load = [&](int64_t kb, int s) {
    uint8_t* st = stage(s);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      cp_async16(st + SL::a + ((tid >> 4) + 16 * i) * kALd + (tid & 15) * 16, asrc[i] + (aok[i] ? kb * kMmaBK * 2 : 0),
                 aok[i]);
#pragma unroll
    for (int i = 0; i < kBCh; ++i) {
      if constexpr (FMT == kFP4)
        cp_async16(st + SL::b + ((tid >> 2) + 64 * i) * kRawLd + (tid & 3) * 16, bsrc[i] + (bok[i] ? kb * kMmaBK / 2 : 0),
                   bok[i]);
      else
        cp_async16(st + SL::b + ((tid >> 3) + 32 * i) * kMmaLd + (tid & 7) * 16, bsrc[i] + (bok[i] ? kb * kMmaBK : 0),
                   bok[i]);
    }
    if (tid < kMmaBN) {
      if constexpr (FMT == kFP4)
        cp_async4(st + SL::sb + tid * 4, ssrc + (sok ? kb * 4 : 0), sok);
      else  // one E8M0 byte per 128 x 128 block, kept as the low byte of the row's word
        st[SL::sb + tid * 4] = sok ? ssrc[kb] : 0;
    }
  };
  uint8_t* Bw = gsm + size_t(kStages) * SL::bytes;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nkb) load(s, s);
    cp_async_commit();
  }
  // ldmatrix: A matrix q = lane / 8 covers rows (q & 1) * 8 and bytes (q >> 1) * 16 of a 16 x 16 bf16 tile; B
  // matrix q covers rows (q >> 1) * 8 of two adjacent 8-row fragments and bytes (q & 1) * 16. The warp's four n8
  // fragments: UP two of w1 and the same two of w3 (j = 0, 1 gate; 2, 3 up), DOWN four adjacent ones.
  auto frag_row = [&](int j) { return UP ? (j < 2 ? wn * 16 + j * 8 : 64 + wn * 16 + (j - 2) * 8) : wn * 32 + j * 8; };
  const int a_off = (wm * 32 + (lq & 1) * 8 + lr) * kALd + (lq >> 1) * 16;
  const int b_off0 = (frag_row(0) + (lq >> 1) * 8 + lr) * kALd + (lq & 1) * 16;
  const int b_off1 = (frag_row(2) + (lq >> 1) * 8 + lr) * kALd + (lq & 1) * 16;
  float acc[2][4][4] = {};
  for (int64_t kb = 0; kb < nkb; ++kb) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kb landed for every thread; the previous K block's tiles are consumed
    {
      const int64_t nk = kb + kStages - 1;
      if (nk < nkb) load(nk, int(nk % kStages));
      cp_async_commit();
    }
    const uint8_t* st = stage(int(kb % kStages));
    widen_b<FMT>(st + SL::b, st + SL::sb, Bw);
    __syncthreads();  // Bw complete
#pragma unroll
    for (int ks = 0; ks < kMmaBK * 2; ks += 32) {  // 16 k (32 bytes) per step
      uint32_t af[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) ldmatrix_x4(af[i], st + SL::a + a_off + i * 16 * kALd + ks);
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        uint32_t r[4];
        ldmatrix_x4(r, Bw + (p ? b_off1 : b_off0) + ks);
        bf[2 * p][0] = r[0];
        bf[2 * p][1] = r[1];
        bf[2 * p + 1][0] = r[2];
        bf[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_bf16(acc[i][j], af[i], bf[j]);
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int rl = wm * 32 + i * 16 + gid + (q >> 1) * 8, row = rb + rl;
      if (row >= r1) continue;
      if constexpr (UP) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t n = n0 + wn * 16 + j * 8 + tig * 2 + (q & 1);
          if (n >= N) continue;
          w.h[int64_t(row) * a.inter + n] = moe_hidden(a, acc[i][j][q], acc[i][j + 2][q], a.weights[w.perm[row]]);
        }
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t n = n0 + wn * 32 + j * 8 + tig * 2 + (q & 1);
          if (n >= N) continue;
          const float v = acc[i][j][q];
          w.y[int64_t(w.perm[row]) * a.D + n] = a.out_bf16 ? rbf16(v) : v;
        }
      }
    }
}

template <int FMT, bool UP>
void launch_half(const Launch& L, const DevMoe& a, const MoeWs& w, unsigned max_tiles) {
  static unsigned long long attr = 0;
  if (first_on_device(attr)) {
    const int limit = allow_max_dynamic_smem(reinterpret_cast<const void*>(moe_gemm_k<FMT, UP>));
    DSV4_CUDA_REQUIRE(limit >= StageLayout<FMT>::total, "moe on CUDA: the device's shared memory per block is too small");
  }
  const int64_t cols = UP ? a.inter : a.D, per_block = UP ? kMmaBN / 2 : kMmaBN;
  moe_gemm_k<FMT, UP><<<dim3(unsigned(cdiv(cols, per_block)), max_tiles), kThreads, StageLayout<FMT>::total,
                        L.stream>>>(a, w);
  DSV4_CUDA_LAUNCHED();
}

template <int FMT>
void grouped_gemm(const Launch& L, const DevMoe& a, const MoeWs& w) {
  const unsigned max_tiles = unsigned(cdiv(a.M * a.K, kMmaBM) + std::min<int64_t>(a.E, a.M * a.K));
  DSV4_CUDA_REQUIRE(max_tiles < 65536u, "moe on CUDA: too many rows for the grouped GEMM's grid");
  uint16_t* xb = reinterpret_cast<uint16_t*>(w.codes);
  quantize_fp8_bf16(L, a.x, a.M, a.D, a.D, xb);
  launch_half<FMT, true>(L, a, w, max_tiles);
  quantize_fp8_bf16(L, w.h, a.M * a.K, a.inter, a.inter, xb);
  launch_half<FMT, false>(L, a, w, max_tiles);
}

}  // namespace

bool moe_gemm_fits(const DevMoe& a) {
  // FP8 experts need E8M0 scales (a power of two keeps the widened bf16 weights exact).
  const bool fmt = a.w1.fmt == kFP4 || (a.w1.fmt == kFP8 && a.w1.block == kMmaBK && a.w2.block == kMmaBK &&
                                        a.w3.block == kMmaBK && !a.w1.scale_f32 && !a.w2.scale_f32 && !a.w3.scale_f32);
  return a.act_fp8 && a.M > 16 && fmt && a.D % kMmaBK == 0 && a.inter % kMmaBK == 0 && (a.w1.fmt != kFP4 || a.scales4);
}

void moe_grouped_gemm(const Launch& L, const DevMoe& a, const MoeWs& w) {
  if (a.w1.fmt == kFP4)
    grouped_gemm<kFP4>(L, a, w);
  else
    grouped_gemm<kFP8>(L, a, w);
}

}  // namespace dsv4::cuda
