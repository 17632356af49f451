// Prefill MoE (FP8 activations, M > 16 rows; FP4 experts from M > 64, where the decode kernel stops): the grouped
// GEMM over rows sorted by expert on FP8 tensor cores (mma.sync m16n8k32 e4m3, every target from sm_89).
// Block = one 64-row tile of one expert's sorted rows x 128 weight rows: UP takes 64 columns of w1 and the same 64
// of w3 (the SwiGLU in registers), DOWN 128 columns of w2. K in 128-column blocks, kStages of (gathered activation
// codes, their scales, raw weight bytes, weight scales) in flight through cp.async, fragments by ldmatrix.
//
// FP4 experts: each block widens its raw e2m1 tile to e4m3 in shared memory once per K block. Their scales are
// per 32 columns, which would force a promotion to fp32 after every mma (a multiply and an add per output per
// k32 step: more issue slots than the mma itself). Instead the four 32-column scales 2^e_g of a weight row's K
// block are rebased to one, 2^b with b = max e_g - 6, and each group's codes shifted by e_g - b exponent steps
// (an exact e4m3 code shift for shifts in [-5, 6]: 6 * 2^6 = 384 <= 448, 0.5 * 2^-5 is still normal), so a K
// block promotes once, as the FP8 linear does. A row whose scales span more than 11 steps keeps its own scales
// and the block promotes per 32 columns for that K block (exact either way; only the summation order differs
// from the CPU, as in every tensor-core kernel).
#include <algorithm>

#include "kernels/cuda/cuda_moe.cuh"
#include "kernels/cuda/cuda_weights.cuh"

namespace dsv4::cuda {
namespace {

constexpr int kStages = 3, kThreads = 256;
constexpr int kRawLd = kMmaBK / 2 + 16;  // raw FP4 row pitch: 64 B (+16: ldmatrix-free, but distinct banks)

template <int FMT>
struct StageLayout {  // byte offsets inside one stage; every area 16-byte aligned
  static constexpr int a = 0;                                    // A codes [BM][kMmaLd]
  static constexpr int sa = a + kMmaBM * kMmaLd;                 // A scales [BM] f32
  static constexpr int b = sa + kMmaBM * 4;                      // B: raw FP4 [BN][kRawLd] or e4m3 [BN][kMmaLd]
  static constexpr int sb = b + kMmaBN * (FMT == kFP4 ? kRawLd : kMmaLd);  // B scales: 4 E8M0 bytes / f32 per row
  static constexpr int bytes = sb + kMmaBN * 4;
  // After the stages, FP4 only: the widened B tile and its per-row, per-32-column scales.
  static constexpr int conv = FMT == kFP4 ? kMmaBN * kMmaLd + kMmaBN * 4 * 4 : 0;
  static constexpr int total = kStages * bytes + conv;
};

// 4 e2m1 values -> e4m3 codes scaled by 2^shift (shift in [-5, 6], as up / down byte steps of 8 * |shift|):
// magnitudes by byte permutes, non-zero bytes moved up or down whole exponent steps, the sign last.
__device__ __forceinline__ uint32_t e2m1x4_to_e4m3x4_shifted(uint32_t nibbles16, uint32_t up, uint32_t down) {
  uint32_t mag = __byte_perm(0x3C383000u, 0x4C484440u, nibbles16 & 0x7777u);
  mag = __vsubus4(mag + (__vcmpne4(mag, 0u) & up), down);
  return mag | __byte_perm(0u, 0x80808080u, (nibbles16 >> 1) & 0x4444u);
}

// Widens this thread's two (row, 32-column group) pieces of stage's raw FP4 tile into Bc / swc; returns whether
// one of its rows keeps per-group scales (the block then promotes per 32 columns).
__device__ __forceinline__ bool widen_fp4(const uint8_t* raw, const uint8_t* rsc, uint8_t* Bc, float* swc) {
  bool wide = false;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = int(threadIdx.x >> 2) + 64 * i, g = int(threadIdx.x & 3);
    const uint32_t e4 = *reinterpret_cast<const uint32_t*>(rsc + row * 4);
    const int e0 = int(e4 & 255), e1 = int((e4 >> 8) & 255), e2 = int((e4 >> 16) & 255), e3 = int(e4 >> 24);
    const int mx = max(max(e0, e1), max(e2, e3)), mn = min(min(e0, e1), min(e2, e3)), eg = int((e4 >> (8 * g)) & 255);
    // Uniform scales need no shift (also zero-filled rows past N); a span of at most 11 rebases exactly.
    const bool rebase = mx != mn && mx != 255 && mx - mn <= 11 && mx >= 7;
    wide |= mx != mn && !rebase;
    const int shift = rebase ? eg - (mx - 6) : 0;
    const uint32_t up = shift > 0 ? uint32_t(8 * shift) * 0x01010101u : 0u;
    const uint32_t down = shift < 0 ? uint32_t(-8 * shift) * 0x01010101u : 0u;
    swc[row * 4 + g] = rebase ? __uint_as_float(uint32_t(mx - 6) << 23) : e8m0_to_f32(uint8_t(eg));
    const uint4 v = *reinterpret_cast<const uint4*>(raw + row * kRawLd + g * 16);
    const uint32_t r[4] = {v.x, v.y, v.z, v.w};
    uint32_t o[8];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      o[2 * q] = e2m1x4_to_e4m3x4_shifted(r[q] & 0xffffu, up, down);
      o[2 * q + 1] = e2m1x4_to_e4m3x4_shifted(r[q] >> 16, up, down);
    }
    uint8_t* dst = Bc + row * kMmaLd + g * 32;
    *reinterpret_cast<uint4*>(dst) = make_uint4(o[0], o[1], o[2], o[3]);
    *reinterpret_cast<uint4*>(dst + 16) = make_uint4(o[4], o[5], o[6], o[7]);
  }
  return wide;
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
  // This thread's copies per K block, as sources at K block 0 (a false predicate zero-fills):
  // A rows tid / 8 + 32 i, 16 B chunk tid % 8; FP4 B rows tid / 4 + 64 i, chunk tid % 4 (FP8: as A, 4 of them);
  // threads < 64 the activation scale of row tid, threads < 128 the weight scales of row tid.
  constexpr int kBCh = FMT == kFP4 ? 2 : 4;
  const uint8_t* asrc[2];
  bool aok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int sr = src_row[(tid >> 3) + 32 * i];
    aok[i] = sr >= 0;
    asrc[i] = aok[i] ? w.codes + int64_t(sr) * K + (tid & 7) * 16 : w.codes;
  }
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
  const float* sasrc = nullptr;
  const DevWeight* swt = nullptr;
  int64_t sn = 0;
  if (tid < kMmaBM && src_row[tid] >= 0) sasrc = w.cscale + int64_t(src_row[tid]) * nkb;
  if (tid < kMmaBN) sn = brow(tid, swt);
  const bool sok = tid < kMmaBN && sn < N;
  const uint8_t* ssrc = nullptr;  // FP4: the row's E8M0 scales at K block 0
  if constexpr (FMT == kFP4)
    if (tid < kMmaBN) ssrc = static_cast<const uint8_t*>(swt->scale) + (sok ? sn * swt->scale_cols : 0);
  auto stage = [&](int s) { return gsm + size_t(s) * SL::bytes; };
  auto load = [&](int64_t kb, int s) {
    uint8_t* st = stage(s);
    const int64_t k0 = kb * kMmaBK;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      cp_async16(st + SL::a + ((tid >> 3) + 32 * i) * kMmaLd + (tid & 7) * 16, asrc[i] + (aok[i] ? k0 : 0), aok[i]);
    if (tid < kMmaBM) cp_async4(st + SL::sa + tid * 4, sasrc ? sasrc + kb : w.cscale, sasrc != nullptr);
#pragma unroll
    for (int i = 0; i < kBCh; ++i) {
      if constexpr (FMT == kFP4)
        cp_async16(st + SL::b + ((tid >> 2) + 64 * i) * kRawLd + (tid & 3) * 16, bsrc[i] + (bok[i] ? k0 / 2 : 0), bok[i]);
      else
        cp_async16(st + SL::b + ((tid >> 3) + 32 * i) * kMmaLd + (tid & 7) * 16, bsrc[i] + (bok[i] ? k0 : 0), bok[i]);
    }
    if (tid < kMmaBN) {
      if constexpr (FMT == kFP4) {  // the row's four E8M0 bytes of this K block
        cp_async4(st + SL::sb + tid * 4, ssrc + (sok ? kb * 4 : 0), sok);
      } else {  // one scale per 128 x 128 block (read after the same barrier as the tiles)
        reinterpret_cast<float*>(st + SL::sb)[tid] = sok ? fp8_scale(*swt, sn, kb * kMmaBK) : 0.f;
      }
    }
  };
  uint8_t* Bc = gsm + size_t(kStages) * SL::bytes;                  // FP4: widened B
  float* swc = reinterpret_cast<float*>(Bc + kMmaBN * kMmaLd);      // FP4: [BN][4] scales of the widened B
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nkb) load(s, s);
    cp_async_commit();
  }
  // ldmatrix: A matrix q = lane / 8 covers rows (q & 1) * 8 and bytes (q >> 1) * 16 of a 16 x 32 tile; B matrix q
  // covers rows (q >> 1) * 8 of two adjacent 8-row fragments and bytes (q & 1) * 16. The warp's four n8 fragments:
  // UP two of w1 and the same two of w3 (j = 0, 1 gate; 2, 3 up), DOWN four adjacent ones.
  auto frag_row = [&](int j) { return UP ? (j < 2 ? wn * 16 + j * 8 : 64 + wn * 16 + (j - 2) * 8) : wn * 32 + j * 8; };
  const int a_off = (wm * 32 + (lq & 1) * 8 + lr) * kMmaLd + (lq >> 1) * 16;
  const int b_off0 = (frag_row(0) + (lq >> 1) * 8 + lr) * kMmaLd + (lq & 1) * 16;
  const int b_off1 = (frag_row(2) + (lq >> 1) * 8 + lr) * kMmaLd + (lq & 1) * 16;
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
    const float* sa = reinterpret_cast<const float*>(st + SL::sa);
    const uint8_t* Bt;
    const float* sw;
    int sw_stride;
    bool per_group = false;
    if constexpr (FMT == kFP4) {
      per_group = __syncthreads_or(widen_fp4(st + SL::b, st + SL::sb, Bc, swc)) != 0;  // also: Bc complete
      Bt = Bc;
      sw = swc;
      sw_stride = 4;
    } else {
      Bt = st + SL::b;
      sw = reinterpret_cast<const float*>(st + SL::sb);
      sw_stride = 0;  // one scale per row
    }
    float rs[2][2];  // this thread's rows' activation scales
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) rs[i][h] = sa[wm * 32 + i * 16 + gid + h * 8];
    float blk[2][4][4] = {};
#pragma unroll 1  // unrolled, the fragments of all four steps stay live and spill
    for (int ks = 0; ks < 4; ++ks) {
      uint32_t af[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) ldmatrix_x4(af[i], st + SL::a + a_off + i * 16 * kMmaLd + ks * 32);
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        uint32_t r[4];
        ldmatrix_x4(r, Bt + (p ? b_off1 : b_off0) + ks * 32);
        bf[2 * p][0] = r[0];
        bf[2 * p][1] = r[1];
        bf[2 * p + 1][0] = r[2];
        bf[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_e4m3(blk[i][j], af[i], bf[j]);
      if (per_group || ks == 3) {  // promote: the K block's (or, per group, this 32 columns') products
        const int g = sw_stride ? ks : 0;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float cs = sw[(frag_row(j) + tig * 2 + h) * (sw_stride ? sw_stride : 1) + g];
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
              for (int v = 0; v < 2; ++v) {
                acc[i][j][v * 2 + h] += blk[i][j][v * 2 + h] * (rs[i][v] * cs);
                blk[i][j][v * 2 + h] = 0.f;
              }
          }
      }
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
  quantize_fp8_codes(L, a.x, a.M, a.D, a.D, w.codes, w.cscale);
  launch_half<FMT, true>(L, a, w, max_tiles);
  quantize_fp8_codes(L, w.h, a.M * a.K, a.inter, a.inter, w.codes, w.cscale);
  launch_half<FMT, false>(L, a, w, max_tiles);
}

}  // namespace

bool moe_gemm_fits(const DevMoe& a) {
  const bool fmt = a.w1.fmt == kFP4 || (a.w1.fmt == kFP8 && a.w1.block == kMmaBK && a.w2.block == kMmaBK);
  auto aligned4 = [](const DevWeight& x) { return reinterpret_cast<uintptr_t>(x.scale) % 4 == 0; };
  return a.act_fp8 && a.M > 16 && fmt && a.D % kMmaBK == 0 && a.inter % kMmaBK == 0 &&
         (a.w1.fmt != kFP4 || (aligned4(a.w1) && aligned4(a.w2) && aligned4(a.w3)));
}

void moe_grouped_gemm(const Launch& L, const DevMoe& a, const MoeWs& w) {
  if (a.w1.fmt == kFP4)
    grouped_gemm<kFP4>(L, a, w);
  else
    grouped_gemm<kFP8>(L, a, w);
}

}  // namespace dsv4::cuda
