// CUDA op benchmark: measured device read bandwidth (a large reduction, not a copy) and FP8 tensor-core peak
// (a dense mma.sync loop), then the decode linears at DeepSeek-V4-Flash shapes as % of their bandwidth floor,
// attention decode at 1K / 64K context, and the FP8 prefill linear at M = 8192 as % of the mma peak.
// Also cross-checks the GEMV path against the tiled paths on the same weights (max relative difference).
#if DSV4_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_kernels.h"

using namespace dsv4;

namespace {

struct Timer {
  cudaStream_t s;
  cudaEvent_t a, b;
  explicit Timer(cudaStream_t st) : s(st) {
    DSV4_CUDA_CHECK(cudaEventCreate(&a));
    DSV4_CUDA_CHECK(cudaEventCreate(&b));
  }
  void start() { DSV4_CUDA_CHECK(cudaEventRecord(a, s)); }
  double stop_us() {
    DSV4_CUDA_CHECK(cudaEventRecord(b, s));
    DSV4_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    DSV4_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    return ms * 1e3;
  }
};

std::mt19937 rng(1234);
std::vector<uint8_t> random_bytes(size_t n, uint8_t mask = 0xff, uint8_t avoid = 0x7f) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) {
    b = uint8_t(rng()) & mask;
    if ((b & 0x7f) == avoid) b ^= 1;  // no e4m3 NaN codes
  }
  return v;
}
std::vector<float> random_floats(size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct Weight {
  std::unique_ptr<Buffer> data, scale;
  LinearWeight w;
};

Weight make_weight(Backend& be, WeightFormat f, int64_t out, int64_t in) {
  Weight r;
  r.w.fmt = f;
  r.w.out = out;
  r.w.in = in;
  if (f == WeightFormat::FP8Block) {
    r.data = be.alloc(size_t(out * in), BufferUsage::Weights);
    r.w.data = Tensor(r.data.get(), 0, DType::U8, {out, in});
    auto d = random_bytes(size_t(out * in));
    be.upload(r.w.data, d.data(), d.size());
    const int64_t tr = (out + 127) / 128, tc = (in + 127) / 128;
    r.scale = be.alloc(size_t(tr * tc), BufferUsage::Weights);
    r.w.scale = Tensor(r.scale.get(), 0, DType::U8, {tr, tc});
    std::vector<uint8_t> s(size_t(tr * tc));
    for (auto& b : s) b = uint8_t(116 + rng() % 8);
    be.upload(r.w.scale, s.data(), s.size());
    r.w.scale_cols = tc;
  } else if (f == WeightFormat::FP4Group32) {
    r.data = be.alloc(size_t(out * in / 2), BufferUsage::Weights);
    r.w.data = Tensor(r.data.get(), 0, DType::U8, {out, in / 2});
    auto d = random_bytes(size_t(out * in / 2), 0xff, 0xff);
    be.upload(r.w.data, d.data(), d.size());
    r.scale = be.alloc(size_t(out * in / 32), BufferUsage::Weights);
    r.w.scale = Tensor(r.scale.get(), 0, DType::U8, {out, in / 32});
    std::vector<uint8_t> s(size_t(out * in / 32));
    for (auto& b : s) b = uint8_t(118 + rng() % 8);
    be.upload(r.w.scale, s.data(), s.size());
    r.w.scale_cols = in / 32;
  } else {
    const int64_t es = f == WeightFormat::BF16 ? 2 : 4;
    r.data = be.alloc(size_t(out * in * es), BufferUsage::Weights);
    r.w.data = Tensor(r.data.get(), 0, f == WeightFormat::BF16 ? DType::BF16 : DType::F32, {out, in});
    auto x = random_floats(size_t(out * in), 0.05f);
    if (f == WeightFormat::BF16) {
      std::vector<uint16_t> h(x.size());
      for (size_t i = 0; i < x.size(); ++i) h[i] = f32_to_bf16(x[i]);
      be.upload(r.w.data, h.data(), h.size() * 2);
    } else {
      be.upload(r.w.data, x.data(), x.size() * 4);
    }
  }
  return r;
}
uint64_t weight_bytes(const LinearWeight& w) { return w.nbytes() + uint64_t(w.scale.valid() ? w.scale.nbytes() : 0); }

void usage() {
  std::printf(
      "usage: cuda_ops_bench [--device N] [--iters N] [--quick] [--case NAME]\n"
      "  Measures device read bandwidth (reduction over 4 GiB) and the FP8 mma.sync peak, then times on the CUDA\n"
      "  backend: decode linears (FP8 wq_a/wq_b/wkv/wo_b, FP4 experts) at M = 1, 4, 16, 64 as %% of the bandwidth\n"
      "  floor, attention decode at 1K and 64K context, and the FP8 prefill linear at M = 8192 as %% of mma peak.\n"
      "  --quick: fewer iterations. --case NAME: only the decode linear NAME (e.g. \"wq_b\"), for profilers.\n"
      "  Exit code 1 when no CUDA device is present.\n");
}

}  // namespace

int main(int argc, char** argv) {
  int device = 0, iters = 50;
  std::string only;  // --case NAME: run only the decode linear whose name starts with NAME (for profilers)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else if (a == "--device" && i + 1 < argc) {
      device = std::atoi(argv[++i]);
    } else if (a == "--iters" && i + 1 < argc) {
      iters = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--case" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--quick") {
      iters = 10;
    } else {
      usage();
      return 2;
    }
  }
  std::string why;
  auto be = make_cuda_backend(device, &why);
  if (!be) {
    std::printf("no CUDA backend: %s\n", why.c_str());
    return 1;
  }
  try {
    const cuda::Launch L = cuda::launch_of(*be);
    Timer tm(L.stream);
    std::printf("%s, %d SMs\n", be->name().c_str(), L.num_sms);

    // ---- read bandwidth: a sum over 4 GiB
    const int64_t nf = int64_t(1) << 30;
    auto big = be->alloc(size_t(nf * 4), BufferUsage::Workspace);
    Tensor bt(big.get(), 0, DType::F32, {nf});
    be->fill(bt, 0x3c);
    auto sinkb = be->alloc(64, BufferUsage::Workspace);
    float* sink = reinterpret_cast<float*>(sinkb->base());
    cuda::reduce_sum(L, bt.data<float>(), nf, sink);
    tm.start();
    for (int i = 0; i < 5; ++i) cuda::reduce_sum(L, bt.data<float>(), nf, sink);
    const double bw = 5.0 * double(nf) * 4 / (tm.stop_us() * 1e-6);
    std::printf("read bandwidth (reduction over 4 GiB): %.2f TB/s\n", bw / 1e12);
    big.reset();

    // ---- FP8 tensor-core peak
    cuda::fp8_mma_peak(L, sink, 1000);
    tm.start();
    const double flops = cuda::fp8_mma_peak(L, sink, 20000);
    const double peak = flops / (tm.stop_us() * 1e-6);
    std::printf("FP8 mma.sync m16n8k32 peak (dense loop): %.0f TFLOP/s\n", peak / 1e12);
    // On sm_90 the line above is the emulated e4m3 mma (a loop figure, not a reachable rate); the kernels on bf16
    // tensor cores (the MoE prefill GEMM, wo_a) are bounded by this one.
    cuda::bf16_mma_peak(L, sink, 1000);
    tm.start();
    const double bflops = cuda::bf16_mma_peak(L, sink, 20000);
    std::printf("bf16 mma.sync m16n8k16 peak (dense loop): %.0f TFLOP/s\n", bflops / (tm.stop_us() * 1e-6) / 1e12);
    be->synchronize();

    // ---- decode linears
    struct Shape {
      const char* name;
      WeightFormat f;
      int64_t out, in;
    };
    const Shape shapes[] = {{"wq_a fp8", WeightFormat::FP8Block, 1024, 4096},
                            {"wq_b fp8", WeightFormat::FP8Block, 32768, 1024},
                            {"wkv fp8", WeightFormat::FP8Block, 512, 4096},
                            {"wo_b fp8", WeightFormat::FP8Block, 4096, 8192},
                            {"expert w1 fp4", WeightFormat::FP4Group32, 2048, 4096},
                            {"expert w2 fp4", WeightFormat::FP4Group32, 4096, 2048}};
    const int64_t Ms[] = {1, 4, 16, 64};
    auto xb = be->alloc(size_t(8192) * 32768 * 4, BufferUsage::Workspace);
    auto yb = be->alloc(size_t(8192) * 32768 * 4, BufferUsage::Workspace);
    {
      auto hx = random_floats(size_t(64) * 32768);
      be->upload(Tensor(xb.get(), 0, DType::F32, {64, 32768}), hx.data(), hx.size() * 4);
    }
    std::printf("\n%-16s %4s %8s %9s %9s %8s %8s  %s\n", "linear", "M", "MB", "us", "graph us", "TB/s", "%floor",
                "check (vs tiled)");
    for (const Shape& s : shapes) {
      if (!only.empty() && std::string(s.name).rfind(only, 0) != 0) continue;
      // Enough copies that the rotation does not fit the 60 MB L2.
      const int64_t one = s.f == WeightFormat::FP8Block ? s.out * s.in : s.out * s.in / 2;
      const int copies = int(std::max<int64_t>(1, std::min<int64_t>(16, (256ll << 20) / one)));
      std::vector<Weight> ws;
      for (int c = 0; c < copies; ++c) ws.push_back(make_weight(*be, s.f, s.out, s.in));
      const uint64_t bytes = weight_bytes(ws[0].w);
      for (int64_t M : Ms) {
        Tensor x(xb.get(), 0, DType::F32, {M, s.in}), y(yb.get(), 0, DType::F32, {M, s.out});
        LinearOpts o;
        o.act_fp8 = true;
        for (int w = 0; w < copies; ++w) be->linear(x, ws[size_t(w)].w, y, o);
        tm.start();
        for (int i = 0; i < iters; ++i) be->linear(x, ws[size_t(i % copies)].w, y, o);
        const double us = tm.stop_us() / iters;
        // The same calls captured in a CUDA graph: kernel time without the host's per-call launch cost.
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        DSV4_CUDA_CHECK(cudaStreamBeginCapture(L.stream, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < copies * 4; ++i) be->linear(x, ws[size_t(i % copies)].w, y, o);
        DSV4_CUDA_CHECK(cudaStreamEndCapture(L.stream, &graph));
        DSV4_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        DSV4_CUDA_CHECK(cudaGraphLaunch(exec, L.stream));
        tm.start();
        const int reps = std::max(1, iters / 4);
        for (int i = 0; i < reps; ++i) DSV4_CUDA_CHECK(cudaGraphLaunch(exec, L.stream));
        const double gus = tm.stop_us() / (reps * copies * 4);
        DSV4_CUDA_CHECK(cudaGraphExecDestroy(exec));
        DSV4_CUDA_CHECK(cudaGraphDestroy(graph));
        const double floor_us = double(bytes) / bw * 1e6;
        // Cross-check: rows of this M against the same rows computed inside a 96-row call (tiled path).
        std::string check;
        if (M <= 16) {
          std::vector<float> a(size_t(M * s.out)), b(size_t(96 * s.out));
          be->linear(x, ws[0].w, y, o);
          be->download(a.data(), y, a.size() * 4);
          Tensor x96(xb.get(), 0, DType::F32, {96, s.in}), y96(yb.get(), 0, DType::F32, {96, s.out});
          be->linear(x96, ws[0].w, y96, o);
          be->download(b.data(), y96, b.size() * 4);
          double num = 0, den = 0;
          for (size_t i = 0; i < a.size(); ++i) {
            num = std::max(num, double(std::fabs(a[i] - b[i])));
            den = std::max(den, double(std::fabs(b[i])));
          }
          char buf[64];
          std::snprintf(buf, sizeof buf, "max|diff|/max|y| = %.2e", num / std::max(den, 1e-30));
          check = buf;
        }
        std::printf("%-16s %4lld %8.2f %9.2f %9.2f %8.2f %7.1f%%  %s\n", s.name, (long long)M, bytes / 1e6, us, gus,
                    bytes / gus / 1e6, 100.0 * floor_us / gus, check.c_str());
      }
    }

    if (!only.empty()) return 0;

    // ---- MoE decode: 256 FP4 experts [2048, 4096] / [4096, 2048] + FP8 shared expert, top-6 routing, one op.
    // Weights are filled with constant codes (timing only; the conformance test checks the numbers).
    {
      const int64_t E = 256, K = 6, D = 4096, I = 2048;
      auto fill_weight = [&](WeightFormat f, int64_t out, int64_t in, std::vector<std::unique_ptr<Buffer>>& keep) {
        LinearWeight w;
        w.fmt = f;
        w.out = out;
        w.in = in;
        const bool fp4 = f == WeightFormat::FP4Group32;
        const int64_t db = fp4 ? out * in / 2 : out * in;
        const int64_t sr = fp4 ? out : (out + 127) / 128, sc = fp4 ? in / 32 : (in + 127) / 128;
        keep.push_back(be->alloc(size_t(db + sr * sc), BufferUsage::Weights));
        w.data = Tensor(keep.back().get(), 0, DType::U8, {out, db / out});
        w.scale = Tensor(keep.back().get(), db, DType::U8, {sr, sc});
        w.scale_cols = sc;
        be->fill(w.data, fp4 ? 0x35 : 0x34);
        be->fill(w.scale, 0x7c);
        return w;
      };
      std::vector<std::unique_ptr<Buffer>> keep;
      std::vector<ExpertWeights> routed(static_cast<size_t>(E));
      for (auto& e : routed) {
        e.w1 = fill_weight(WeightFormat::FP4Group32, I, D, keep);
        e.w2 = fill_weight(WeightFormat::FP4Group32, D, I, keep);
        e.w3 = fill_weight(WeightFormat::FP4Group32, I, D, keep);
      }
      ExpertWeights shared{fill_weight(WeightFormat::FP8Block, I, D, keep), fill_weight(WeightFormat::FP8Block, D, I, keep),
                           fill_weight(WeightFormat::FP8Block, I, D, keep)};
      std::printf("\n%-24s %4s %10s %10s %8s\n", "moe decode (one op)", "M", "us", "MB read", "%floor");
      for (int64_t M : {int64_t(1), int64_t(4), int64_t(16)}) {
        auto mb = be->alloc(size_t(M * (D + E + 2 * K + D) * 4), BufferUsage::Workspace);
        Tensor x(mb.get(), 0, DType::F32, {M, D}), logits(mb.get(), M * D * 4, DType::F32, {M, E}),
            ex(mb.get(), M * (D + E) * 4, DType::I32, {M, K}), wt(mb.get(), M * (D + E + K) * 4, DType::F32, {M, K}),
            out(mb.get(), M * (D + E + 2 * K) * 4, DType::F32, {M, D});
        auto hx = random_floats(size_t(M * (D + E)));
        be->upload(x, hx.data(), size_t(M * D) * 4);
        be->upload(logits, hx.data() + M * D, size_t(M * E) * 4);
        RouteArgs ra;
        ra.logits = logits;
        ra.k = int(K);
        ra.experts = ex;
        ra.weights = wt;
        be->route(ra);
        std::vector<int32_t> hex(static_cast<size_t>(M * K));
        be->download(hex.data(), ex, hex.size() * 4);
        std::sort(hex.begin(), hex.end());
        const int64_t hit = std::unique(hex.begin(), hex.end()) - hex.begin();
        auto scratch = be->alloc(size_t(moe_scratch_bytes(M, K, D, I)), BufferUsage::Workspace);
        MoeArgs a;
        a.x = x;
        a.experts = ex;
        a.weights = wt;
        a.routed = &routed;
        a.shared = &shared;
        a.inter = I;
        a.swiglu_limit = 10.f;
        a.lin.act_fp8 = true;
        a.lin.out_bf16 = true;
        a.round_hidden = a.round_out = true;
        a.scratch = Tensor(scratch.get(), 0, DType::U8, {moe_scratch_bytes(M, K, D, I)});
        a.out = out;
        be->moe(a);
        be->synchronize();
        tm.start();
        for (int i = 0; i < iters; ++i) be->moe(a);
        const double us = tm.stop_us() / iters;
        const double bytes = double(hit) * 3 * weight_bytes(routed[0].w1) + 3.0 * weight_bytes(shared.w1);
        std::printf("moe E=256 k=6 (%3lld hit)  %4lld %10.1f %10.1f %7.1f%%\n", (long long)hit, (long long)M, us,
                    bytes / 1e6, 100.0 * (bytes / bw * 1e6) / us);
      }
    }
    // ---- prefill linear, FP8 tensor cores
    std::printf("\n%-16s %6s %10s %10s %8s\n", "prefill linear", "M", "us", "TFLOP/s", "%peak");
    for (const Shape& s : {shapes[3], shapes[0]}) {
      Weight w = make_weight(*be, s.f, s.out, s.in);
      const int64_t M = 8192;
      {
        auto hx = random_floats(size_t(M * s.in));
        be->upload(Tensor(xb.get(), 0, DType::F32, {M, s.in}), hx.data(), hx.size() * 4);
      }
      Tensor x(xb.get(), 0, DType::F32, {M, s.in}), y(yb.get(), 0, DType::F32, {M, s.out});
      LinearOpts o;
      o.act_fp8 = true;
      be->linear(x, w.w, y, o);
      tm.start();
      const int it = std::max(1, iters / 5);
      for (int i = 0; i < it; ++i) be->linear(x, w.w, y, o);
      const double us = tm.stop_us() / it;
      const double f = 2.0 * M * s.out * s.in;
      std::printf("%-16s %6lld %10.1f %10.1f %7.1f%%\n", s.name, (long long)M, us, f / us / 1e6, 100.0 * f / (us * 1e-6) / peak);
    }

    // ---- attention decode over FP8 paged KV (ratio-128 layer: window 128 + every compressed entry)
    std::printf("\n%-24s %4s %10s %10s %8s\n", "attention decode", "M", "us", "KV MB", "%floor");
    for (int64_t ctx : {int64_t(1024), int64_t(65536)}) {
      for (int64_t M : {int64_t(1), int64_t(16), int64_t(64)}) {
        const int64_t H = 64, hd = 512, W = 128, bt = 256, ratio = 128;
        KvLayerView v;
        KvArenaShape& sh = v.shape;
        sh.block_tokens = int(bt);
        sh.window = int(W);
        sh.main = KvCodec{KvDtype::FP8, int(hd), 64, false};
        sh.index = KvCodec{KvDtype::FP8, 128, 0, true};
        const int64_t eb = sh.main.bytes();
        sh.block_bytes = (bt / ratio) * eb;
        const int64_t blocks_per = (ctx + bt - 1) / bt;
        sh.n_blocks = blocks_per * M;
        sh.slots_offset = sh.n_blocks * sh.block_bytes;
        sh.slot_bytes = W * eb;
        sh.n_slots = M;
        v.layer.ratio = int(ratio);
        v.layer.comp_off = 0;
        v.layer.ring_off = 0;
        auto arena = be->alloc(size_t(sh.arena_bytes()), BufferUsage::KvCache);
        v.arena = Tensor(arena.get(), 0, DType::U8, {sh.arena_bytes()});
        {
          // Valid FP8 entries: random codes, scale bytes ~ 2^-7, bf16 rope values.
          std::vector<uint8_t> h(size_t(sh.arena_bytes()));
          for (int64_t e = 0; e * eb < int64_t(h.size()); ++e) {
            uint8_t* p = h.data() + e * eb;
            const int64_t n = std::min<int64_t>(eb, int64_t(h.size()) - e * eb);
            for (int64_t i = 0; i < n; ++i) p[i] = i < 448 ? uint8_t(rng() & 0x77) : i < 576 ? uint8_t(i & 1 ? 0x3c : rng()) : 120;
          }
          be->upload(v.arena, h.data(), h.size());
        }
        BatchMeta meta;
        meta.M = M;
        meta.n_items = M;
        meta.max_blocks = blocks_per;
        std::vector<int32_t> pos(static_cast<size_t>(M)), ri(static_cast<size_t>(M)), items(static_cast<size_t>(M * 4)),
            table(static_cast<size_t>(M * blocks_per));
        for (int64_t m = 0; m < M; ++m) {
          pos[size_t(m)] = int32_t(ctx - 1);
          ri[size_t(m)] = int32_t(m);
          items[size_t(m * 4)] = int32_t(ctx - 1);
          items[size_t(m * 4 + 1)] = int32_t(m);
          items[size_t(m * 4 + 2)] = 1;
          items[size_t(m * 4 + 3)] = int32_t(m);
          for (int64_t b = 0; b < blocks_per; ++b) table[size_t(m * blocks_per + b)] = int32_t(m * blocks_per + b);
        }
        auto mb = be->alloc(size_t(4 * (3 * M + M * 4 + M * blocks_per)) + 64, BufferUsage::Io);
        int64_t off = 0;
        auto put = [&](const std::vector<int32_t>& src, int64_t n) {
          Tensor t(mb.get(), off, DType::I32, {n});
          be->upload(t, src.data(), size_t(n) * 4);
          off += n * 4;
          return t;
        };
        meta.pos = put(pos, M);
        meta.row_item = put(ri, M);
        meta.items = put(items, M * 4).view({M, 4});
        meta.block_table = put(table, M * blocks_per).view({M, blocks_per});
        auto qb = be->alloc(size_t(M * H * hd * 4 * 2 + M * hd * 4 + H * 4), BufferUsage::Workspace);
        AttentionArgs a;
        a.q = Tensor(qb.get(), 0, DType::F32, {M, H, hd});
        a.out = Tensor(qb.get(), M * H * hd * 4, DType::F32, {M, H, hd});
        a.kv = Tensor(qb.get(), 2 * M * H * hd * 4, DType::F32, {M, hd});
        a.sink = Tensor(qb.get(), 2 * M * H * hd * 4 + M * hd * 4, DType::F32, {H});
        {
          auto hq = random_floats(size_t(M * H * hd + M * hd + H), 0.05f);
          be->upload(a.q, hq.data(), size_t(M * H * hd) * 4);
          be->upload(a.kv, hq.data() + M * H * hd, size_t(M * hd) * 4);
          be->upload(a.sink, hq.data() + M * H * hd + M * hd, size_t(H) * 4);
        }
        a.meta = &meta;
        a.view = v;
        a.H = H;
        a.scale = 1.f / std::sqrt(float(hd));
        a.probs_bf16 = true;
        be->attention(a);
        be->synchronize();
        tm.start();
        for (int i = 0; i < iters; ++i) be->attention(a);
        const double us = tm.stop_us() / iters;
        const int64_t keys = std::min<int64_t>(W, ctx) + ctx / ratio;
        const double kvb = double(M * keys * eb);
        std::printf("ctx %-6lld ratio 128     %4lld %10.1f %10.2f %7.1f%%\n", (long long)ctx, (long long)M, us, kvb / 1e6,
                    100.0 * (kvb / bw * 1e6) / us);
      }
    }
    be->synchronize();
    std::printf("\nops %llu, uploads %llu (%llu bytes), downloads %llu\n", (unsigned long long)be->counters().ops,
                (unsigned long long)be->counters().uploads, (unsigned long long)be->counters().upload_bytes,
                (unsigned long long)be->counters().downloads);
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
  return 0;
}
#else
#include <cstdio>
int main() {
  std::printf("cuda_ops_bench: built without CUDA\n");
  return 1;
}
#endif
