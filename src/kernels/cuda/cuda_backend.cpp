// The CUDA Backend: device memory (cudaMalloc only), one stream, pinned staging for uploads, and every op as
// kernels in kernels/cuda/*.cu. Shapes are checked here on the host; indices that live in device tables are
// checked by the kernels, which report into a device error slot read at every synchronize/download.
// Compiled by the host compiler (fmt does not build under nvcc); empty without CUDA.
#include "kernels/backend.h"

#if DSV4_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "kernels/cuda/cuda_kernels.h"

namespace dsv4 {
namespace cuda {

void throw_cuda_error(const char* file, int line, const char* expr, cudaError_t e) {
  throw Error(fmt::format("{}:{}: {}: {} ({})", file, line, expr, cudaGetErrorString(e), int(e)));
}
void throw_error(const char* file, int line, const char* msg) { throw Error(fmt::format("{}:{}: {}", file, line, msg)); }

}  // namespace cuda

namespace {

using namespace dsv4::cuda;

class CudaBuffer final : public Buffer {
 public:
  CudaBuffer(Backend* be, uint8_t* p, size_t n, BufferUsage u) : Buffer(be, p, n, u) {}
  ~CudaBuffer() override {
    if (base_) cudaFree(base_);  // destructors must not throw; a failed free is reported by the next call
  }
};

constexpr size_t kStagingBytes = 32u << 20;  // two halves, double-buffered

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device) : device_(device) {
    DSV4_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop{};
    DSV4_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    name_ = fmt::format("cuda:{} ({}, sm_{}{})", device, prop.name, prop.major, prop.minor);
    int integrated = 0;
    DSV4_CUDA_CHECK(cudaDeviceGetAttribute(&integrated, cudaDevAttrIntegrated, device));
    integrated_ = integrated != 0;
    DSV4_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    DSV4_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&err_), 16));
    DSV4_CUDA_CHECK(cudaMemset(err_, 0, 16));
    DSV4_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&arrivals_), kArrivals * sizeof(unsigned)));
    DSV4_CUDA_CHECK(cudaMemset(arrivals_, 0, kArrivals * sizeof(unsigned)));
    L_.arrivals = arrivals_;
    L_.n_arrivals = kArrivals;
    L_.stream = stream_;
    L_.err = err_;
    L_.num_sms = prop.multiProcessorCount;
    L_.device = device;
  }
  ~CudaBackend() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    for (int i = 0; i < 2; ++i)
      if (staged_[i]) cudaEventDestroy(staged_[i]);
    if (staging_) cudaFreeHost(staging_);
    if (ws_) cudaFree(ws_);
    for (auto& [k, t] : tables_) cudaFree(t.dev);
    cudaFree(err_);
    cudaFree(arrivals_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  const Launch& launch() const { return L_; }

  // ---- memory
  std::unique_ptr<Buffer> alloc(size_t bytes, BufferUsage usage) override {
    dev();
    uint8_t* p = nullptr;
    if (bytes) {
      cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&p), bytes);
      if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        fail("CUDA: cannot allocate {} bytes of {} memory ({}; {} of {} bytes free)", bytes, buffer_usage_name(usage),
             cudaGetErrorString(e), fr, tot);
      }
    }
    return std::make_unique<CudaBuffer>(this, p, bytes, usage);
  }
  std::unique_ptr<Buffer> import_host(const void*, size_t, BufferUsage) override { return nullptr; }

  void upload(const Tensor& dst, const void* src, size_t bytes, int64_t dst_offset) override {
    check_mine(dst, "upload");
    DSV4_CHECK(dst_offset >= 0 && dst_offset + int64_t(bytes) <= dst.nbytes(), "upload of {} bytes at {} into a {}-byte tensor",
               bytes, dst_offset, dst.nbytes());
    if (!bytes) return;
    dev();
    ensure_staging();
    const uint8_t* s = static_cast<const uint8_t*>(src);
    uint8_t* d = dst.data<uint8_t>() + dst_offset;
    const size_t half = kStagingBytes / 2;
    for (size_t off = 0; off < bytes; off += half) {
      const size_t n = std::min(half, bytes - off);
      // Wait until this half's previous copy has left the staging buffer, refill it, queue the copy.
      DSV4_CUDA_CHECK(cudaEventSynchronize(staged_[next_]));
      uint8_t* stage = staging_ + next_ * half;
      std::memcpy(stage, s + off, n);
      DSV4_CUDA_CHECK(cudaMemcpyAsync(d + off, stage, n, cudaMemcpyHostToDevice, stream_));
      DSV4_CUDA_CHECK(cudaEventRecord(staged_[next_], stream_));
      next_ ^= 1;
    }
    counters_.uploads++;
    counters_.upload_bytes += bytes;
  }
  void download(void* dst, const Tensor& src, size_t bytes, int64_t src_offset) override {
    check_mine(src, "download");
    DSV4_CHECK(src_offset >= 0 && src_offset + int64_t(bytes) <= src.nbytes(),
               "download of {} bytes at {} from a {}-byte tensor", bytes, src_offset, src.nbytes());
    dev();
    if (bytes) DSV4_CUDA_CHECK(cudaMemcpyAsync(dst, src.data<uint8_t>() + src_offset, bytes, cudaMemcpyDeviceToHost, stream_));
    synchronize();
    counters_.downloads++;
    counters_.download_bytes += bytes;
  }
  void fill(const Tensor& dst, uint8_t byte) override {
    check_mine(dst, "fill");
    dev();
    if (dst.nbytes()) DSV4_CUDA_CHECK(cudaMemsetAsync(dst.data<uint8_t>(), byte, size_t(dst.nbytes()), stream_));
  }
  void synchronize() override {
    dev();
    DSV4_CUDA_CHECK(cudaStreamSynchronize(stream_));
    int e[4] = {0, 0, 0, 0};
    DSV4_CUDA_CHECK(cudaMemcpy(e, err_, 16, cudaMemcpyDeviceToHost));
    if (e[0]) {
      DSV4_CUDA_CHECK(cudaMemset(err_, 0, 16));
      static const char* what[] = {"",
                                   "embed: token id out of range (row, token, vocab)",
                                   "KV block table entry outside the arena (item, block index, block id)",
                                   "sequence slot outside the arena (slot, n_slots)",
                                   "arena_copy region outside the arena (src, dst, bytes)",
                                   "expert id out of range (slot, expert, E)",
                                   "row index out of range (row, index, rows)",
                                   "position beyond the block table or scratch (item/row, index, limit)",
                                   "hash routing: token id out of range (row, token, vocab)"};
      fail("CUDA backend: {} [{}, {}, {}]", e[0] > 0 && e[0] <= 8 ? what[e[0]] : "unknown device error", e[1], e[2],
           e[3]);
    }
  }
  MemoryInfo memory_info() const override {
    MemoryInfo mi;
    size_t fr = 0, tot = 0;
    dev();
    DSV4_CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    mi.free = fr;
    mi.total = tot;
    if (integrated_) {
      // Unified memory (GB10): cudaMemGetInfo under-reports what the OS can still give; ask the OS.
      std::ifstream f("/proc/meminfo");
      std::string key;
      uint64_t kb = 0;
      std::string unit;
      while (f >> key >> kb >> unit) {
        if (key == "MemAvailable:") mi.free = kb * 1024;
        if (key == "MemTotal:") mi.total = kb * 1024;
      }
    }
    return mi;
  }

  // ---- ops
  void embed(const Tensor& tokens, const Tensor& table, int hc, const Tensor& X) override {
    op();
    const int64_t M = tokens.numel(), D = table.row_elems();
    DSV4_CHECK(tokens.dtype == DType::I32 && (table.dtype == DType::BF16 || table.dtype == DType::F32),
               "embed: tokens I32 and a bf16/f32 table");
    DSV4_CHECK(X.dtype == DType::F32 && X.numel() == M * hc * D, "embed: X has {} values, want {}", X.numel(), M * hc * D);
    cuda::embed(L_, p<int32_t>(tokens), M, p<void>(table), table.dtype == DType::BF16, table.rows(), D, hc, p<float>(X));
  }

  void linear(const Tensor& x, const LinearWeight& w, const Tensor& y, LinearOpts o) override {
    op();
    LinearCall c = linear_call(x, w, y, o);
    cuda::linear(L_, c, ws(size_t(linear_ws_bytes(c, L_.num_sms))));
  }

  void rms_norm(const Tensor& x, int64_t D, const Tensor& w, float eps, const Tensor& y,
                bool bf16_out = false) override {
    op();
    f32(x, "rms_norm x");
    f32(y, "rms_norm y");
    DSV4_CHECK(D > 0 && x.numel() % D == 0 && y.numel() == x.numel(), "rms_norm: {} values in rows of {}", x.numel(), D);
    if (w.valid()) DSV4_CHECK(w.dtype == DType::F32 && w.numel() == D, "rms_norm: weight of {} values, want {}", w.numel(), D);
    cuda::rms_norm(L_, p<float>(x), x.numel() / D, D, w.valid() ? p<float>(w) : nullptr, eps, p<float>(y), bf16_out);
  }

  void rope(const Tensor& x, int64_t H, int64_t hd, const Tensor& pos, const Tensor& freqs, bool inverse,
            bool bf16_out = false) override {
    op();
    f32(x, "rope x");
    const int64_t M = pos.numel(), half = freqs.numel();
    DSV4_CHECK(pos.dtype == DType::I32, "rope: positions must be I32");
    DSV4_CHECK(freqs.dtype == DType::F64 || freqs.dtype == DType::F32, "rope: freqs must be F64 or F32");
    DSV4_CHECK(x.numel() == M * H * hd && 2 * half <= hd, "rope: x has {} values, want {} x {} x {} (freqs {})", x.numel(), M,
               H, hd, half);
    cuda::rope(L_, p<float>(x), M, H, hd, p<int32_t>(pos), p<void>(freqs), freqs.dtype == DType::F64, half, inverse,
               bf16_out);
  }
  void round_bf16(const Tensor& x) override {
    op();
    f32(x, "round_bf16");
    cuda::round_bf16(L_, p<float>(x), x.numel());
  }
  void fp8_roundtrip(const Tensor& x, int64_t row, int64_t prefix, int64_t block) override {
    op();
    f32(x, "fp8_roundtrip");
    DSV4_CHECK(row > 0 && x.numel() % row == 0 && prefix >= 0 && prefix <= row && block > 0,
               "fp8_roundtrip: rows of {}, prefix {}, block {}", row, prefix, block);
    cuda::fp8_roundtrip(L_, p<float>(x), x.numel() / row, row, prefix, block);
  }
  void hadamard_fp4(const Tensor& x, int64_t dim) override {
    op();
    f32(x, "hadamard_fp4");
    DSV4_CHECK(dim > 0 && (dim & (dim - 1)) == 0 && x.numel() % dim == 0, "hadamard_fp4: dim {} (power of two)", dim);
    cuda::hadamard_fp4(L_, p<float>(x), x.numel() / dim, dim, 1.f / std::sqrt(float(dim)));
  }
  void kv_roundtrip(const Tensor& x, const KvCodec& codec) override {
    op();
    f32(x, "kv_roundtrip");
    DSV4_CHECK(codec.dim > 0 && x.numel() % codec.dim == 0, "kv_roundtrip: {} values in rows of {}", x.numel(), codec.dim);
    cuda::kv_roundtrip(L_, p<float>(x), x.numel() / codec.dim, dc(codec));
  }
  void scale(const Tensor& x, float alpha) override {
    op();
    f32(x, "scale");
    cuda::scale(L_, p<float>(x), x.numel(), alpha);
  }
  void gather_rows(const Tensor& x, const Tensor& rows, const Tensor& out) override {
    op();
    DSV4_CHECK(rows.dtype == DType::I32, "gather_rows: rows must be I32");
    const int64_t rb = x.row_elems() * int64_t(dtype_size(x.dtype));
    DSV4_CHECK(out.nbytes() == rows.numel() * rb, "gather_rows: out has {} bytes, want {}", out.nbytes(), rows.numel() * rb);
    cuda::gather_rows(L_, p<uint8_t>(x), x.rows(), rb, p<int32_t>(rows), rows.numel(), p<uint8_t>(out));
  }

  void hc_pre(const Tensor& X, const HcParams& hp, const Tensor& y, const Tensor& post, const Tensor& comb,
              bool bf16_out = false) override {
    op();
    const int64_t M = hc_check(X, hp, 2 + hp.hc, 3);
    DSV4_CHECK(y.numel() == M * hp.D && post.numel() == M * hp.hc && comb.numel() == M * hp.hc * hp.hc,
               "hc_pre: output shapes");
    const cuda::DevHc d = hcp(hp);
    float* part = static_cast<float*>(ws(cuda::hc_ws_bytes(M, d, L_.num_sms)));
    cuda::hc_pre(L_, p<float>(X), M, d, part, p<float>(y), p<float>(post), p<float>(comb), bf16_out);
  }
  void hc_post(const Tensor& y, const Tensor& X, const Tensor& post, const Tensor& comb, int hc, const Tensor& Xout,
               bool bf16_out = false) override {
    op();
    const int64_t D = y.row_elems(), M = y.rows();
    DSV4_CHECK(X.numel() == M * hc * D && Xout.numel() == X.numel() && post.numel() == M * hc &&
                   comb.numel() == M * hc * hc,
               "hc_post: shapes");
    DSV4_CHECK(X.buf != Xout.buf || X.offset != Xout.offset, "hc_post: Xout must not alias X");
    cuda::hc_post(L_, p<float>(y), p<float>(X), p<float>(post), p<float>(comb), M, hc, D, p<float>(Xout), bf16_out);
  }
  void hc_head(const Tensor& X, const HcParams& hp, const Tensor& y) override {
    op();
    const int64_t M = hc_check(X, hp, 1, 1);
    DSV4_CHECK(y.numel() == M * hp.D, "hc_head: y shape");
    const cuda::DevHc d = hcp(hp);
    float* part = static_cast<float*>(ws(cuda::hc_ws_bytes(M, d, L_.num_sms)));
    cuda::hc_head(L_, p<float>(X), M, d, part, p<float>(y));
  }

  void window_store(const Tensor& kv, const BatchMeta& meta, const SnapshotList& snaps, const KvLayerView& view) override {
    op();
    const DevView v = dvw(view);
    const int64_t hd = view.shape.main.dim;
    f32(kv, "window_store kv");
    DSV4_CHECK(kv.numel() == meta.M * hd, "window_store: kv has {} values, want {} x {}", kv.numel(), meta.M, hd);
    DSV4_CHECK(v.ring_off >= 0 && v.window > 0, "window_store: layer without a window ring");
    const bool snap = snaps.n > 0 && view.shape.with_tail && view.layer.tail_off >= 0;
    cuda::window_store(L_, p<float>(kv), hd, dm(meta), snap ? p<int32_t>(snaps.item) : nullptr,
                       snap ? p<int32_t>(snaps.end) : nullptr, snap ? snaps.n : 0, v);
  }
  void store_entries(const Tensor& src, const EntryList& e, const BatchMeta& meta, const KvLayerView& view,
                     bool indexer) override {
    op();
    if (!e.n) return;
    const DevView v = dvw(view);
    const KvCodec& c = indexer ? view.shape.index : view.shape.main;
    DSV4_CHECK(v.ratio > 0 && (indexer ? v.idx_off : v.comp_off) >= 0, "store_entries: layer has no such entries");
    DSV4_CHECK(src.numel() == e.n * c.dim, "store_entries: src has {} values, want {} x {}", src.numel(), e.n, c.dim);
    cuda::store_entries(L_, p<float>(src), c.dim, p<int32_t>(e.item), p<int32_t>(e.index), e.n, dm(meta), v, indexer);
  }
  void arena_copy(const Tensor& arena, const Tensor& copies, int64_t n) override {
    op();
    if (!n) return;
    DSV4_CHECK(copies.dtype == DType::I64 && copies.numel() >= n * 3, "arena_copy: copies must be I64 [n, 3]");
    cuda::arena_copy(L_, p<uint8_t>(arena), arena.nbytes(), p<int64_t>(copies), n);
  }

  void attention(const AttentionArgs& a) override {
    op();
    DSV4_CHECK(a.meta, "attention: no batch meta");
    const DevView v = dvw(a.view);
    DSV4_CHECK(!a.block_bidirectional || v.ratio == 0, "attention: a bidirectional block on a ratio {} layer",
               v.ratio);
    DevAttention d;
    d.hd = a.view.shape.main.dim;
    d.H = a.H;
    const int64_t M = a.meta->M;
    DSV4_CHECK(a.q.numel() == M * a.H * d.hd && a.out.numel() == a.q.numel() && a.kv.numel() == M * d.hd &&
                   a.sink.numel() >= a.H,
               "attention: q/out [M, H, hd], kv [M, hd], sink [H]");
    d.q = p<float>(a.q);
    d.kv = p<float>(a.kv);
    d.sink = p<float>(a.sink);
    if (v.ratio == 4) {
      DSV4_CHECK(a.selected.valid() && a.selected.dtype == DType::I32 && a.selected.rows() == M,
                 "attention: ratio 4 needs selected I32 [M, k]");
      d.selected = p<int32_t>(a.selected);
      d.n_sel = a.selected.row_elems();
    }
    d.meta = dm(*a.meta);
    d.view = v;
    d.scale = a.scale;
    d.probs_bf16 = a.probs_bf16;
    d.bf16_operands = a.bf16_operands;
    d.bidirectional = a.block_bidirectional;
    d.out = p<float>(a.out);
    // Upper bound of compressed keys per row, for the key split (the positions themselves are on the device).
    if (v.ratio == 4) d.max_comp = d.n_sel;
    if (v.ratio == 128) d.max_comp = a.meta->max_blocks * int64_t(v.block_tokens) / 128;
    cuda::attention(L_, d, ws(size_t(attention_ws_bytes(d, L_.num_sms))));
  }
  void index_topk(const IndexTopkArgs& a) override {
    op();
    DSV4_CHECK(a.meta, "index_topk: no batch meta");
    const int64_t M = a.meta->M;
    DevIndexTopk d;
    d.view = dvw(a.view);
    DSV4_CHECK(d.view.idx_off >= 0 && a.view.shape.index.dim == a.dim, "index_topk: layer without indexer keys of dim {}",
               a.dim);
    DSV4_CHECK(a.q.numel() == M * a.heads * a.dim && a.w.numel() == M * a.heads, "index_topk: q [M, IH, ID], w [M, IH]");
    DSV4_CHECK(a.out.dtype == DType::I32 && a.out.numel() == M * a.k, "index_topk: out I32 [M, k]");
    DSV4_CHECK(a.scratch.dtype == DType::F32 && a.scratch.rows() == M, "index_topk: scratch f32 [M, max_entries]");
    d.q = p<float>(a.q);
    d.w = p<float>(a.w);
    d.meta = dm(*a.meta);
    d.heads = a.heads;
    d.dim = a.dim;
    d.k = a.k;
    d.bf16 = a.bf16;
    d.scratch = p<float>(a.scratch);
    d.max_entries = a.scratch.row_elems();
    d.out = p<int32_t>(a.out);
    cuda::index_topk(L_, d);
  }
  void compress(const CompressArgs& a) override {
    op();
    DSV4_CHECK(a.meta && a.entries && a.snapshots, "compress: meta, entries and snapshots are required");
    DevCompress d;
    d.ratio = a.ratio;
    d.coff = a.coff;
    d.d = a.d;
    d.indexer = a.indexer;
    const int64_t M = a.meta->M, w = int64_t(a.coff) * a.d;
    DSV4_CHECK(a.u.numel() == M * w && a.g.numel() == M * w && a.ape.numel() == a.ratio * w,
               "compress: u, g [M, coff*d], ape [ratio, coff*d]");
    DSV4_CHECK(a.out.numel() >= a.entries->n * a.d, "compress: out holds {} values, want {} x {}", a.out.numel(),
               a.entries->n, a.d);
    d.u = p<float>(a.u);
    d.g = p<float>(a.g);
    d.ape = p<float>(a.ape);
    d.meta = dm(*a.meta);
    d.n_entries = a.entries->n;
    if (d.n_entries) {
      d.e_row = p<int32_t>(a.entries->row);
      d.e_item = p<int32_t>(a.entries->item);
      d.e_index = p<int32_t>(a.entries->index);
    }
    d.n_snaps = a.snapshots->n;
    if (d.n_snaps) {
      d.s_item = p<int32_t>(a.snapshots->item);
      d.s_end = p<int32_t>(a.snapshots->end);
    }
    d.view = dvw(a.view);
    DSV4_CHECK((a.indexer ? d.view.iring_off : d.view.cring_off) >= 0, "compress: layer without a compressor ring");
    d.out = a.out.valid() ? p<float>(a.out) : nullptr;
    cuda::compress(L_, d);
  }
  void route(const RouteArgs& a) override {
    op();
    DevRoute d;
    d.M = a.logits.rows();
    d.E = int(a.logits.row_elems());
    d.k = a.k;
    d.score_func = a.score_func;
    d.logits = p<float>(a.logits);
    DSV4_CHECK(a.experts.numel() == d.M * a.k && a.weights.numel() == d.M * a.k, "route: experts/weights [M, k]");
    if (a.bias.valid()) d.bias = p<float>(a.bias);
    if (a.tid2eid.valid()) {
      DSV4_CHECK(a.tid2eid.dtype == DType::I32 && a.tid2eid.row_elems() == a.k && a.tokens.numel() == d.M,
                 "route: tid2eid I32 [vocab, k], tokens [M]");
      d.tid2eid = p<int32_t>(a.tid2eid);
      d.vocab = a.tid2eid.rows();
      d.tokens = p<int32_t>(a.tokens);
    }
    d.normalize = a.normalize;
    d.route_scale = a.route_scale;
    d.experts = p<int32_t>(a.experts);
    d.weights = p<float>(a.weights);
    cuda::route(L_, d);
  }
  void moe(const MoeArgs& a) override {
    op();
    DSV4_CHECK(a.routed && !a.routed->empty(), "moe: no routed experts");
    DSV4_CHECK(!a.share, "not implemented on CUDA: expert-parallel load balancing (--enable-eplb)");
    // Expert parallelism needs the expert sort to skip other ranks' experts: not written for CUDA yet.
    DSV4_CHECK(a.expert_begin == 0 && (a.expert_end < 0 || a.expert_end == int64_t(a.routed->size())) &&
                   (a.shared_inter == 0 || a.shared_inter == a.inter),
               "not implemented on CUDA: expert parallelism (--enable-expert-parallel); use tensor parallelism");
    DevMoe d;
    d.M = a.x.rows();
    d.D = a.x.row_elems();
    d.K = a.experts.row_elems();
    d.inter = a.inter;
    d.E = int64_t(a.routed->size());
    DSV4_CHECK(a.experts.dtype == DType::I32 && a.experts.rows() == d.M && a.weights.numel() == d.M * d.K,
               "moe: experts I32 [M, K], weights [M, K]");
    DSV4_CHECK(a.out.numel() == d.M * d.D, "moe: out [M, D]");
    d.x = p<float>(a.x);
    d.experts = p<int32_t>(a.experts);
    d.weights = p<float>(a.weights);
    d.table = expert_table(*a.routed, a.inter, d.D, &d.w1, &d.w2, &d.w3, &d.scales4);
    DevWeight sh[3];
    if (a.shared && a.shared->w1.valid()) {
      sh[0] = dw(a.shared->w1);
      sh[1] = dw(a.shared->w2);
      sh[2] = dw(a.shared->w3);
      DSV4_CHECK(sh[0].out == a.inter && sh[0].in == d.D && sh[2].out == a.inter && sh[2].in == d.D &&
                     sh[1].out == d.D && sh[1].in == a.inter,
                 "moe: shared expert shapes");
      d.shared = sh;
    }
    d.swiglu_limit = a.swiglu_limit;
    d.act_fp8 = a.lin.act_fp8;
    d.out_bf16 = a.lin.out_bf16;
    d.round_hidden = a.round_hidden;
    d.round_out = a.round_out;
    d.out = p<float>(a.out);
    int64_t lin = 0;
    if (d.shared)
      for (int i = 0; i < 3; ++i) {
        LinearCall c;
        c.M = d.M;
        c.w = sh[i];
        c.act_fp8 = d.act_fp8;
        lin = std::max(lin, linear_ws_bytes(c, L_.num_sms));
      }
    const int64_t mb = moe_ws_bytes(d.M, d.K, d.D, d.inter, d.E, L_.num_sms);
    uint8_t* w = static_cast<uint8_t*>(ws(size_t(mb + lin)));
    cuda::moe(L_, d, w, w + mb);
  }

 private:
  // Every entry point selects this backend's device: a process may drive several GPUs, one backend each.
  void dev() const { DSV4_CUDA_CHECK(cudaSetDevice(device_)); }
  void op() {
    dev();
    counters_.ops++;
  }
  void check_mine(const Tensor& t, const char* what) const {
    DSV4_CHECK(t.valid(), "{}: invalid tensor", what);
    DSV4_CHECK(t.buf->backend() == this, "{}: tensor of another backend", what);
  }
  template <typename T>
  T* p(const Tensor& t) const {
    check_mine(t, "op");
    return reinterpret_cast<T*>(t.buf->base() + t.offset);
  }
  static void f32(const Tensor& t, const char* what) { DSV4_CHECK(t.dtype == DType::F32, "{}: f32 tensor expected", what); }

  DevWeight dw(const LinearWeight& w) const {
    DevWeight d;
    d.fmt = int(w.fmt);
    d.out = w.out;
    d.in = w.in;
    d.data = p<uint8_t>(w.data);
    DSV4_CHECK(int64_t(w.nbytes()) <= w.data.nbytes(), "linear weight: {} bytes of data, want {}", w.data.nbytes(),
               w.nbytes());
    if (w.quantized()) {
      d.scale = p<void>(w.scale);
      d.scale_f32 = w.scale_is_f32();
      d.scale_cols = w.scale_cols;
      if (w.fmt == WeightFormat::FP8Block) {
        DSV4_CHECK(w.block > 0 && w.scale.rows() * w.block >= w.row0 + w.out && w.scale_cols * w.block >= w.in,
                   "FP8 weight: scale [{}, {}] does not cover [{}, {}] from row {}", w.scale.rows(), w.scale_cols, w.out,
                   w.in, w.row0);
      } else {
        DSV4_CHECK(w.in % 32 == 0 && w.scale.rows() >= w.out && w.scale_cols * 32 >= w.in, "FP4 weight: scale shape");
      }
    }
    d.block = w.block;
    d.block_shift = -1;
    for (int s = 0; s < 31; ++s)
      if (w.block == (1 << s)) d.block_shift = s;
    d.row0 = w.row0;
    return d;
  }
  static DevCodec dc(const KvCodec& c) {
    DevCodec d;
    d.dtype = int(c.dtype);
    d.dim = c.dim;
    d.rope = c.rope;
    d.index_key = c.index_key;
    d.bytes = int(c.bytes());
    return d;
  }
  DevMeta dm(const BatchMeta& m) const {
    DevMeta d;
    d.M = m.M;
    d.n_items = m.n_items;
    d.max_blocks = m.max_blocks;
    if (m.M) {
      DSV4_CHECK(m.pos.numel() >= m.M && m.row_item.numel() >= m.M, "batch meta: pos/row_item shorter than M");
      d.pos = p<int32_t>(m.pos);
      d.row_item = p<int32_t>(m.row_item);
    }
    if (m.n_items) {
      DSV4_CHECK(m.items.numel() >= m.n_items * BatchMeta::kItemFields, "batch meta: items table too short");
      d.items = p<int32_t>(m.items);
      if (m.max_blocks) {
        DSV4_CHECK(m.block_table.numel() >= m.n_items * m.max_blocks, "batch meta: block table too short");
        d.block_table = p<int32_t>(m.block_table);
      }
    }
    return d;
  }
  DevView dvw(const KvLayerView& v) const {
    DevView d;
    d.arena = p<uint8_t>(v.arena);
    d.arena_bytes = v.arena.nbytes();
    const KvArenaShape& s = v.shape;
    DSV4_CHECK(s.arena_bytes() <= d.arena_bytes, "KV view: arena of {} bytes, shape wants {}", d.arena_bytes, s.arena_bytes());
    d.block_tokens = s.block_tokens;
    d.window = s.window;
    d.with_tail = s.with_tail;
    d.main = dc(s.main);
    d.index = dc(s.index);
    d.block_bytes = s.block_bytes;
    d.n_blocks = s.n_blocks;
    d.slots_offset = s.slots_offset;
    d.slot_bytes = s.slot_bytes;
    d.n_slots = s.n_slots;
    d.main_d = s.main_d;
    d.index_d = s.index_d;
    d.ratio = v.layer.ratio;
    d.comp_off = v.layer.comp_off;
    d.idx_off = v.layer.idx_off;
    d.tail_off = v.layer.tail_off;
    d.cstate_off = v.layer.cstate_off;
    d.istate_off = v.layer.istate_off;
    d.ring_off = v.layer.ring_off;
    d.cring_off = v.layer.cring_off;
    d.iring_off = v.layer.iring_off;
    DSV4_CHECK(d.ratio == 0 || (d.block_tokens % d.ratio == 0), "KV view: block_tokens {} not a multiple of ratio {}",
               d.block_tokens, d.ratio);
    return d;
  }
  static DevHc hcp_raw(const HcParams& h) {
    DevHc d;
    d.hc = h.hc;
    d.D = h.D;
    d.iters = h.sinkhorn_iters;
    d.norm_eps = h.norm_eps;
    d.hc_eps = h.hc_eps;
    return d;
  }
  DevHc hcp(const HcParams& h) const {
    DevHc d = hcp_raw(h);
    d.fn = p<float>(h.fn);
    d.base = p<float>(h.base);
    d.scale = p<float>(h.scale);
    return d;
  }
  int64_t hc_check(const Tensor& X, const HcParams& h, int mult, int nscale) const {
    const int64_t flat = int64_t(h.hc) * h.D;
    DSV4_CHECK(h.hc > 0 && h.D > 0 && X.numel() % flat == 0, "hc: X of {} values in rows of {}", X.numel(), flat);
    const int64_t rows = int64_t(mult) * h.hc;
    DSV4_CHECK(h.fn.numel() == rows * flat && h.base.numel() >= rows && h.scale.numel() >= nscale,
               "hc: fn [{}, {}], base [{}], scale [{}] expected", rows, flat, rows, nscale);
    return X.numel() / flat;
  }

  LinearCall linear_call(const Tensor& x, const LinearWeight& w, const Tensor& y, LinearOpts o) const {
    f32(x, "linear x");
    f32(y, "linear y");
    const int G = std::max(1, o.groups);
    DSV4_CHECK(w.out % G == 0, "linear: {} outputs in {} groups", w.out, G);
    const int64_t M = x.numel() / std::max<int64_t>(1, int64_t(G) * w.in);
    DSV4_CHECK(x.numel() == M * G * w.in && y.numel() == M * w.out, "linear: x has {} values, y {}; want [M, {}] -> [M, {}]",
               x.numel(), y.numel(), G * w.in, w.out);
    LinearCall c;
    c.x = p<float>(x);
    c.M = M;
    c.ldx = int64_t(G) * w.in;
    c.w = dw(w);
    c.groups = G;
    c.act_fp8 = o.act_fp8 && w.quantized();
    c.out_bf16 = o.out_bf16;
    c.bf16_input = o.bf16_input;
    c.y = p<float>(y);
    c.ldy = w.out;
    return c;
  }

  // Device table of the routed experts' DevWeights, built once per expert list (re-uploaded if it changes).
  const DevWeight* expert_table(const std::vector<ExpertWeights>& ex, int64_t inter, int64_t D, DevWeight* w1, DevWeight* w2,
                                DevWeight* w3, bool* scales4) {
    std::vector<DevWeight> host(ex.size() * 3);
    *scales4 = true;  // the tensor-core MoE kernels copy a weight row's scales 4 bytes at a time
    for (size_t e = 0; e < ex.size(); ++e) {
      host[e * 3] = dw(ex[e].w1);
      host[e * 3 + 1] = dw(ex[e].w2);
      host[e * 3 + 2] = dw(ex[e].w3);
      for (int k = 0; k < 3; ++k) {
        const DevWeight& a = host[e * 3 + size_t(k)];
        const DevWeight& b = host[size_t(k)];
        DSV4_CHECK(a.fmt == b.fmt && a.scale_f32 == b.scale_f32 && a.block == b.block,
                   "moe on CUDA: every routed expert must share one weight format");
        const int ch = a.fmt == kF32 ? 4 : a.fmt == kBF16 ? 8 : a.fmt == kFP8 ? 16 : 32;
        DSV4_CHECK(reinterpret_cast<uintptr_t>(a.data) % 16 == 0 && a.in % ch == 0 && (a.fmt != kFP8 || a.block % 16 == 0),
                   "not implemented on CUDA: moe with expert weights not 16-byte aligned or in % {} != 0", ch);
        *scales4 = *scales4 && reinterpret_cast<uintptr_t>(a.scale) % 4 == 0 && a.scale_cols % 4 == 0;
      }
      DSV4_CHECK(host[e * 3].out == inter && host[e * 3].in == D && host[e * 3 + 2].out == inter &&
                     host[e * 3 + 2].in == D && host[e * 3 + 1].out == D && host[e * 3 + 1].in == inter,
                 "moe: expert {} shapes (w1/w3 [{}, {}], w2 [{}, {}])", e, inter, D, D, inter);
    }
    *w1 = host[0];
    *w2 = host[1];
    *w3 = host[2];
    const size_t bytes = host.size() * sizeof(DevWeight);
    Table& t = tables_[&ex];
    if (t.host.size() != host.size() || std::memcmp(t.host.data(), host.data(), bytes) != 0) {
      if (t.dev) {
        DSV4_CUDA_CHECK(cudaStreamSynchronize(stream_));
        DSV4_CUDA_CHECK(cudaFree(t.dev));
        t.dev = nullptr;
      }
      DSV4_CUDA_CHECK(cudaMalloc(&t.dev, bytes));
      DSV4_CUDA_CHECK(cudaMemcpy(t.dev, host.data(), bytes, cudaMemcpyHostToDevice));
      t.host = std::move(host);
    }
    return static_cast<const DevWeight*>(t.dev);
  }

  // Scratch for op intermediates. Grows (with a device sync) only when a larger op arrives: warm up with the
  // largest batch before capturing graphs.
  void* ws(size_t bytes) {
    if (bytes > ws_bytes_) {
      DSV4_CUDA_CHECK(cudaStreamSynchronize(stream_));
      const size_t n = std::max(bytes, ws_bytes_ * 3 / 2);
      if (ws_) DSV4_CUDA_CHECK(cudaFree(ws_));
      ws_ = nullptr;
      ws_bytes_ = 0;
      DSV4_CUDA_CHECK(cudaMalloc(&ws_, n));
      ws_bytes_ = n;
    }
    return ws_;
  }
  void ensure_staging() {
    if (staging_) return;
    DSV4_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&staging_), kStagingBytes, cudaHostAllocDefault));
    for (int i = 0; i < 2; ++i) {
      DSV4_CUDA_CHECK(cudaEventCreateWithFlags(&staged_[i], cudaEventDisableTiming));
      DSV4_CUDA_CHECK(cudaEventRecord(staged_[i], stream_));
    }
  }

  struct Table {
    std::vector<DevWeight> host;
    void* dev = nullptr;
  };
  int device_ = 0;
  bool integrated_ = false;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  int* err_ = nullptr;
  static constexpr int64_t kArrivals = 1 << 16;
  unsigned* arrivals_ = nullptr;
  Launch L_;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  uint8_t* staging_ = nullptr;
  cudaEvent_t staged_[2] = {nullptr, nullptr};
  int next_ = 0;
  std::map<const void*, Table> tables_;
};

}  // namespace

cuda::Launch cuda::launch_of(Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  DSV4_CHECK(c, "launch_of: {} is not a CUDA backend", be.name());
  return c->launch();
}

std::unique_ptr<Backend> make_cuda_backend(int device, std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = fmt::format("no usable CUDA driver/device: cudaGetDeviceCount: {}", cudaGetErrorString(e));
    return nullptr;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device";
    return nullptr;
  }
  if (device < 0 || device >= n) {
    if (why) *why = fmt::format("CUDA device {} does not exist ({} present)", device, n);
    return nullptr;
  }
  return std::make_unique<CudaBackend>(device);
}

}  // namespace dsv4

#endif  // DSV4_HAVE_CUDA (without CUDA, kernels/backend_factory.cpp defines the null make_cuda_backend)
