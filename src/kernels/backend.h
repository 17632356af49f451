// The compute interface the DeepSeek-V4 graph is written against: memory (buffers, upload, download,
// synchronize) and ops over tensors in the backend's memory. One implementation per device (kernels/cpu,
// kernels/cuda). Ops are asynchronous with respect to the host unless stated; nothing here returns a value
// computed on the device, so a forward pass never waits on the device until its logits are downloaded.
// Every op has a plain reference implementation in the CPU backend; tests/kernels/backend_ops_test.cpp runs
// every backend against it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kv_format.h"
#include "kernels/linear_weight.h"
#include "kernels/tensor.h"

namespace dsv4 {

struct LinearOpts {
  bool act_fp8 = false;   // reference numerics: FP8 e4m3 per-128 quantization of the input rows (quantized W)
  bool out_bf16 = false;  // reference numerics: round the output to bf16
  // groups > 1: x [M, groups * in] -> y [M, out]; group g multiplies x's g-th slice of `in` columns by
  // rows [g * out/groups, (g+1) * out/groups) of W (the grouped low-rank output projection).
  int groups = 1;
  // The caller guarantees x holds bf16 values exactly (reference numerics rounded it): with act_fp8 off, a
  // backend may multiply x by the de-quantized weights on bf16 tensor cores with no rounding of any operand.
  bool bf16_input = false;
};

// Manifold-constrained hyper-connection parameters of one site (spec §2.3).
struct HcParams {
  Tensor fn;     // f32 [rows, hc * D]
  Tensor base;   // f32 [rows]
  Tensor scale;  // f32 [3] (block sites) or [1] (head)
  int hc = 4, D = 0, sinkhorn_iters = 20;
  float norm_eps = 1e-6f, hc_eps = 1e-6f;
};

// Per-step tables of a batch of chunks (from the step plan), uploaded once per step. Row m of the batch is
// token pos[m] of item row_item[m]; item i's rows are [row0, row0 + len), at positions [start, start + len).
struct BatchMeta {
  enum ItemField { kStart = 0, kRow0 = 1, kLen = 2, kSlot = 3, kItemFields = 4 };
  int64_t M = 0, n_items = 0, max_blocks = 0;
  Tensor pos;          // I32 [M]
  Tensor row_item;     // I32 [M]
  Tensor items;        // I32 [n_items, kItemFields]; kSlot = the sequence's slot (window ring, compressor rings)
  Tensor block_table;  // I32 [n_items, max_blocks]: KV block ids of each item's sequence, from position 0
};

// Entries (compressed KV vectors) completed by this step for one compression ratio, host-computed from
// positions: entry e is entry number index[e] of item item[e], completed by the token in batch row row[e], and
// rotated at position pos[e] = index[e] * ratio.
struct EntryList {
  int64_t n = 0;
  Tensor row, item, index, pos;  // I32 [n] each
};

// Block ends reached in this step (prefix caching): item[s] has just filled the block ending at position end[s].
struct SnapshotList {
  int64_t n = 0;
  Tensor item, end;  // I32 [n] each
};

struct AttentionArgs {
  Tensor q;         // f32 [M, H, hd]
  Tensor kv;        // f32 [M, hd]: this step's K=V rows (already through the cache codec)
  Tensor sink;      // f32 [H] per-head sink logit
  Tensor selected;  // ratio 4: I32 [M, k] compressed-entry indices per row, -1 = none (unused otherwise)
  const BatchMeta* meta = nullptr;
  KvLayerView view;  // window ring (positions before this step) and compressed entries
  int64_t H = 0;
  float scale = 1.f;
  bool probs_bf16 = false;  // reference numerics: probabilities rounded to bf16 before P.V
  // The caller guarantees q and kv hold bf16 values exactly and the cached entries decode to bf16 values
  // (reference numerics with a bf16 or FP8 cache: q rounded, keys round-tripped through the codec), so a
  // backend may multiply them on bf16 tensor cores with no rounding of any operand. Results are unchanged.
  bool bf16_operands = false;
  // DSpark block (ratio 0 only, model/dspark.cpp): every row of an item sees the item's `window` ring
  // positions before its start and ALL of its own rows (bidirectional inside the item), instead of the causal
  // window ending at the row's position.
  bool block_bidirectional = false;
  Tensor out;               // f32 [M, H, hd]
};

// Lightning indexer of a whole batch (spec §2.7): score[m, j] = sum_h w[m, h] * relu(q[m, h] . key_j) over the
// entries j < (pos[m] + 1) / 4 of row m's sequence, then the top k (fewer when fewer are eligible, padded with
// -1), highest first, exact ties to the LOWEST index.
struct IndexTopkArgs {
  Tensor q;        // f32 [M, IH, ID]
  Tensor w;        // f32 [M, IH]
  const BatchMeta* meta = nullptr;
  KvLayerView view;  // indexer keys
  int64_t heads = 0, dim = 0, k = 0;
  bool bf16 = false;  // reference numerics: per-head dots and the sum rounded to bf16
  // f32 [M, C], C = Backend::index_scratch_cols(). C >= a row's eligible entries: every score, then the top k.
  // Otherwise (a backend that tiles) C > 2k: scores in tiles of C - 2k entries, the running top k (scores, then
  // indices as int32 bits) in a row's first 2k columns; same result, bounded by the step's rows, not the context.
  Tensor scratch;
  Tensor out;         // I32 [M, k]
};

// A compressor over a whole batch (spec §2.6): pools the entries in `entries` from this step's (u, g) rows and
// the sequences' token rings, records ring contents at block ends (prefix caching, ratio 4), then stores this
// step's last coff * ratio tokens into the rings.
struct CompressArgs {
  int ratio = 4, coff = 2, d = 0;
  bool indexer = false;  // the indexer's compressor (its own rings and block snapshots)
  Tensor u;              // f32 [M, coff*d] values  (wkv . x)
  Tensor g;              // f32 [M, coff*d] gate logits (wgate . x), ape not yet added
  Tensor ape;            // f32 [ratio, coff*d]
  const BatchMeta* meta = nullptr;
  const EntryList* entries = nullptr;
  const SnapshotList* snapshots = nullptr;
  KvLayerView view;
  Tensor out;  // f32 [entries->n, d]
};

// MoE routing of M tokens (spec §2.8): experts by bias-corrected top-k or by the token-id hash table,
// weights = unbiased scores at those experts, normalized, times route_scale.
struct RouteArgs {
  Tensor logits;   // f32 [M, E]
  int k = 0;
  int score_func = 0;  // 0 sqrtsoftplus, 1 sigmoid, 2 softmax
  Tensor bias;         // f32 [E] (score routing) or invalid
  Tensor tid2eid;      // I32 [vocab, k] (hash routing) or invalid
  Tensor tokens;       // I32 [M] for hash routing
  bool normalize = true;
  float route_scale = 1.f;
  Tensor experts;  // out I32 [M, k]
  Tensor weights;  // out f32 [M, k]
};

struct ExpertWeights {
  LinearWeight w1, w2, w3;  // gate [I, D], down [D, I], up [I, D]
};

// EPLB (model/eplb.h): expert e runs as copies[e] replicas spread over the ranks; the product of row m with e
// is computed by replica m % copies[e], on this rank when here[offset[e] + that replica]. Every rank sees the
// same rows, so each (row, expert) product is computed exactly once in the group.
struct ExpertShare {
  std::vector<int32_t> copies, offset;  // [E], [E + 1]
  std::vector<uint8_t> here;            // [offset[E]]
  bool computes(int32_t e, int64_t m) const { return here[size_t(offset[size_t(e)] + m % copies[size_t(e)])] != 0; }
};

// A whole MoE layer in one op: every routed expert on the rows routed to it, weighted by the routing weight
// (applied inside the SwiGLU, as the reference), plus the shared expert on every row.
// out = sum_j w[m, j] * expert[e[m, j]](x[m]) + shared(x[m]).
struct MoeArgs {
  Tensor x;                                      // f32 [M, D]
  Tensor experts;                                // I32 [M, K]
  Tensor weights;                                // f32 [M, K]
  const std::vector<ExpertWeights>* routed = nullptr;
  const ExpertWeights* shared = nullptr;
  int64_t inter = 0;         // routed experts' hidden width (this rank's slice under tensor parallelism)
  int64_t shared_inter = 0;  // the shared expert's (0: inter); differs from inter under expert parallelism
  // Expert parallelism: only experts [expert_begin, expert_end) are held here; rows routed elsewhere add
  // nothing (another rank adds them). expert_end < 0: every expert.
  int64_t expert_begin = 0, expert_end = -1;
  const ExpertShare* share = nullptr;  // EPLB: which rows of which experts this rank computes (null: all)
  float swiglu_limit = 0;
  LinearOpts lin;        // every expert linear
  bool round_hidden = false;  // reference numerics: SwiGLU output rounded to bf16
  bool round_out = false;     // reference numerics: final sum rounded to bf16
  Tensor scratch;             // U8, moe_scratch_bytes(M, K, D, inter) bytes
  Tensor out;                 // f32 [M, D]
};
int64_t moe_scratch_bytes(int64_t M, int64_t K, int64_t D, int64_t inter);

struct BackendCounters {
  uint64_t ops = 0;              // op calls (not memory calls)
  uint64_t downloads = 0, download_bytes = 0;
  uint64_t uploads = 0, upload_bytes = 0;
};

struct MemoryInfo {
  uint64_t free = 0, total = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory
  virtual std::unique_ptr<Buffer> alloc(size_t bytes, BufferUsage usage) = 0;
  // Wraps host memory that outlives the buffer (the checkpoint mapping) without copying; null when the
  // backend cannot address host memory (then the caller uploads into alloc()ed memory).
  virtual std::unique_ptr<Buffer> import_host(const void* p, size_t bytes, BufferUsage usage) = 0;
  // Host -> backend. `src` may be reused once upload returns.
  virtual void upload(const Tensor& dst, const void* src, size_t bytes, int64_t dst_offset = 0) = 0;
  // Backend -> host; waits for the data (and for every op queued before it).
  virtual void download(void* dst, const Tensor& src, size_t bytes, int64_t src_offset = 0) = 0;
  virtual void fill(const Tensor& dst, uint8_t byte) = 0;  // every byte of dst
  virtual void synchronize() = 0;
  // What the KV budget can still take (device memory, or host memory for host backends).
  virtual MemoryInfo memory_info() const = 0;
  const BackendCounters& counters() const { return counters_; }

  // ---- ops. Shapes are checked; f32 unless stated.
  // X[m, h, :] = table[tokens[m]] for h < hc (table bf16 or f32 [V, D]).
  virtual void embed(const Tensor& tokens, const Tensor& table, int hc, const Tensor& X) = 0;
  // y[M, w.out] = x[M, w.in] . W^T in the weight's own format.
  virtual void linear(const Tensor& x, const LinearWeight& w, const Tensor& y, LinearOpts o) = 0;
  // bf16_out (rms_norm, rope, hc_pre's y, hc_post): the output rounded to bf16 in the same pass, exactly
  // round_bf16 after the op; the reference numerics round there, and a separate pass is a launch per tensor.
  // Overriders repeat the default (defaults bind to the static type).
  // Per row of D values: y = x / sqrt(mean(x^2) + eps) * w (w may be invalid). x == y allowed.
  virtual void rms_norm(const Tensor& x, int64_t D, const Tensor& w, float eps, const Tensor& y,
                        bool bf16_out = false) = 0;
  // Rotates the last 2 * freqs dims of each of the H vectors (hd each) of row m at position pos[m].
  virtual void rope(const Tensor& x, int64_t H, int64_t hd, const Tensor& pos, const Tensor& freqs, bool inverse,
                    bool bf16_out = false) = 0;
  // Rounding simulations of the reference numerics (kernels/quant.h has the scalar definitions).
  virtual void round_bf16(const Tensor& x) = 0;
  // FP8 round trip of the first `prefix` values of every row of `row` values, in blocks of `block`.
  virtual void fp8_roundtrip(const Tensor& x, int64_t row, int64_t prefix, int64_t block) = 0;
  // Per vector of `dim` values: normalized Walsh-Hadamard transform, then FP4 round trip in blocks of 32.
  virtual void hadamard_fp4(const Tensor& x, int64_t dim) = 0;
  // Every row of codec.dim values through the cache codec (encode, decode).
  virtual void kv_roundtrip(const Tensor& x, const KvCodec& codec) = 0;
  virtual void scale(const Tensor& x, float alpha) = 0;
  // out[r] = x[rows[r]] (rows of x.row_elems() values).
  virtual void gather_rows(const Tensor& x, const Tensor& rows, const Tensor& out) = 0;

  // HC_pre: X [M, hc, D] -> y [M, D], post [M, hc], comb [M, hc, hc] (Sinkhorn-normalized).
  virtual void hc_pre(const Tensor& X, const HcParams& p, const Tensor& y, const Tensor& post, const Tensor& comb,
                      bool bf16_out = false) = 0;
  // HC_post: Xout[m, k] = post[m, k] * y[m] + sum_j comb[m, j, k] * X[m, j]. Xout != X.
  virtual void hc_post(const Tensor& y, const Tensor& X, const Tensor& post, const Tensor& comb, int hc,
                       const Tensor& Xout, bool bf16_out = false) = 0;
  // HyperHead: y[m] = sum_h (sigmoid(mix_h * scale + base_h) + eps) * X[m, h].
  virtual void hc_head(const Tensor& X, const HcParams& p, const Tensor& y) = 0;

  // ---- KV cache. Item i of `meta` has slot S = items[i][kSlot], rows [row0, row0 + len) at positions
  // [start, start + len), blocks block_table[i][*]. Main entries use view.shape.main, indexer keys .index.
  //
  // window_store: first, for every snapshot s (item i, block end B, a multiple of block_tokens, start < B <=
  // start + len): for t in [B - window, B) the window entry of t -- main.encode(kv[row0 + t - start]) when
  // t >= start, else the bytes of ring entry t % window of slot S -- is written to block block_table[i][B/bt - 1]
  // at tail_off + (t - (B - window)) * main.bytes(). Then the ring: for t in [max(start, start + len - window),
  // start + len), ring entry t % window of slot S (at ring_off) = main.encode(kv[row0 + t - start]).
  virtual void window_store(const Tensor& kv, const BatchMeta& meta, const SnapshotList& snaps,
                            const KvLayerView& view) = 0;
  // store_entries: entry e (item i, index j) = codec.encode(src[e]) at block block_table[i][j / per] (per =
  // block_tokens / ratio), offset (indexer ? idx_off : comp_off) + (j % per) * codec.bytes().
  virtual void store_entries(const Tensor& src, const EntryList& entries, const BatchMeta& meta,
                             const KvLayerView& view, bool indexer) = 0;
  // Byte copies inside the arena: copies is I64 [n, 3] of (src offset, dst offset, bytes); regions disjoint.
  virtual void arena_copy(const Tensor& arena, const Tensor& copies, int64_t n) = 0;

  // attention: row m (item i, position p) attends to, in one softmax with the per-head sink logit:
  //  - the window t in [max(0, p - window + 1), p]: kv[row0 + t - start] when t >= start, else
  //    main.decode(ring entry t % window of slot S);
  //  - ratio 128: every compressed entry j < (p + 1) / 128; ratio 4: selected[m][c] for each c with a value >= 0;
  //    entry j = main.decode(block block_table[i][j / per] at comp_off + (j % per) * main.bytes()).
  // Scores (q_h . k) * scale; softmax denominator includes exp(sink[h] - max); out_h = sum_k p_k * k (K = V).
  virtual void attention(const AttentionArgs& a) = 0;
  // index_topk: see IndexTopkArgs. Keys are index.decode(block block_table[i][j / per] at idx_off +
  // (j % per) * index.bytes()), per = block_tokens / 4; this step's keys must be stored first.
  virtual void index_topk(const IndexTopkArgs& a) = 0;
  // Scratch columns per row index_topk needs for rows that see up to max_entries entries (top k). The default
  // scores every entry before selecting (grows with the context); a backend that tiles returns a bound.
  virtual int64_t index_scratch_cols(int64_t max_entries, int64_t k) const {
    (void)k;
    return max_entries;
  }
  // Host memory the backend's KV ops allocate per call beyond the workspace (the memory plan budgets it), for
  // sequences of up to max_context tokens and steps of up to max_rows rows. 0: none.
  virtual uint64_t host_scratch_bytes(const KvArenaShape& shape, int64_t max_context, int64_t max_rows,
                                      int64_t topk) const {
    (void)shape, (void)max_context, (void)max_rows, (void)topk;
    return 0;
  }
  // compress: three phases, in this order.
  //  1. Pool: entry e (row r, item i, index j) takes the tokens t in [(j + 1) * ratio - coff * ratio,
  //     (j + 1) * ratio), slot q = t - ((j + 1) * ratio - coff * ratio). Columns: coff = 2: q < ratio -> the A half
  //     [0, d), else the B half [d, 2d); coff = 1: [0, d). Token t's value u_t and logit g_t + ape[t % ratio]
  //     come from row row0 + t - start when t >= start, else from the token ring of slot S (indexer ? iring_off :
  //     cring_off; ring token t % (coff * ratio), laid out [u (coff*d) | g + ape (coff*d)] fp32); t < 0 is
  //     absent (logit -inf). out[e][ch] = sum_q softmax_q(logit[q][ch]) * value[q][ch], per channel.
  //  2. Snapshots (ratio 4, view.shape.with_tail): for each (item i, end B) and t in [B - 4, B), token t's ring
  //     record [u | g + ape] is written to block block_table[i][B/bt - 1] at (indexer ? istate_off : cstate_off)
  //     + (t - (B - 4)) * ring_token_floats * 4.
  //  3. Ring update: for t in [max(start, start + len - coff * ratio), start + len), ring token t % (coff*ratio)
  //     of slot S = [u_t | g_t + ape[t % ratio]].
  virtual void compress(const CompressArgs& a) = 0;
  virtual void route(const RouteArgs& a) = 0;
  virtual void moe(const MoeArgs& a) = 0;

 protected:
  BackendCounters counters_;
};

// Plain host implementation (OpenMP); the reference every other backend is tested against.
std::unique_ptr<Backend> make_cpu_backend();
// The CUDA backend on device `device`, or null (with *why set) when CUDA is not built in or no device exists.
std::unique_ptr<Backend> make_cuda_backend(int device, std::string* why);
// "cpu", "cuda" or "auto" (cuda when a device is present).
std::unique_ptr<Backend> make_backend(const std::string& device, int cuda_device = 0);

}  // namespace dsv4
