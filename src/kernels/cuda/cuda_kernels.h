// The boundary between the CUDA backend class (cuda_backend.cpp, plain C++) and its kernels (*.cu). Only PODs
// and raw device pointers cross it: the .cu files never include fmt (nvcc 13.0 cannot compile fmt 9's
// consteval format strings), and the .cpp never sees device code.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dsv4::cuda {

// Throws dsv4::Error("<file>:<line>: <expr>: <cudaGetErrorString>"); defined in cuda_backend.cpp.
[[noreturn]] void throw_cuda_error(const char* file, int line, const char* expr, cudaError_t e);
[[noreturn]] void throw_error(const char* file, int line, const char* msg);

#define DSV4_CUDA_CHECK(expr)                                                       \
  do {                                                                              \
    cudaError_t dsv4_e_ = (expr);                                                   \
    if (dsv4_e_ != cudaSuccess) ::dsv4::cuda::throw_cuda_error(__FILE__, __LINE__, #expr, dsv4_e_); \
  } while (0)
// After every kernel launch: launch-configuration errors are reported here, not at the next sync.
#define DSV4_CUDA_LAUNCHED() DSV4_CUDA_CHECK(cudaGetLastError())
#define DSV4_CUDA_REQUIRE(cond, msg)                                     \
  do {                                                                   \
    if (!(cond)) ::dsv4::cuda::throw_error(__FILE__, __LINE__, msg);     \
  } while (0)

// Device-side error reports (bad indices in device tables): err[0] = code (first one wins), err[1..3] = values.
// The backend reads them at every synchronize/download and throws.
enum DevErr : int {
  kErrNone = 0,
  kErrToken = 1,       // embed: token id outside the table
  kErrBlock = 2,       // block table entry outside the arena's blocks
  kErrSlot = 3,        // sequence slot outside the arena's slots
  kErrCopy = 4,        // arena_copy region outside the arena
  kErrExpert = 5,      // expert id outside [0, E)
  kErrRow = 6,         // gather_rows / entry row outside the source
  kErrBlockIndex = 7,  // a position or entry index beyond the item's block table
  kErrTid = 8,         // hash routing: token id outside tid2eid
};

// Weight formats as the kernels see them (values of dsv4::WeightFormat).
enum WFmt : int { kF32 = 0, kBF16 = 1, kFP8 = 2, kFP4 = 3 };

struct DevWeight {
  int fmt = kF32;
  int64_t out = 0, in = 0;
  const uint8_t* data = nullptr;
  const void* scale = nullptr;  // FP8: U8 e8m0 or f32 [tiles, scale_cols]; FP4: U8 [out, scale_cols]
  int scale_f32 = 0;
  int64_t scale_cols = 0;
  int block = 128;
  int block_shift = 7;  // log2(block) when block is a power of two, else -1
  int64_t row0 = 0;
};

// KvCodec (kv_format.h) for the kernels.
struct DevCodec {
  int dtype = 0;  // 0 f32, 1 bf16, 2 fp8
  int dim = 0, rope = 0, index_key = 0;
  int bytes = 0;
};

struct DevMeta {
  int64_t M = 0, n_items = 0, max_blocks = 0;
  const int32_t* pos = nullptr;
  const int32_t* row_item = nullptr;
  const int32_t* items = nullptr;  // [n_items, 4]: start, row0, len, slot
  const int32_t* block_table = nullptr;
};

struct DevView {
  uint8_t* arena = nullptr;
  int64_t arena_bytes = 0;
  int block_tokens = 0, window = 0, with_tail = 0;
  DevCodec main, index;
  int64_t block_bytes = 0, n_blocks = 0, slots_offset = 0, slot_bytes = 0, n_slots = 0;
  int main_d = 0, index_d = 0;
  int ratio = 0;
  int64_t comp_off = -1, idx_off = -1, tail_off = -1, cstate_off = -1, istate_off = -1;
  int64_t ring_off = -1, cring_off = -1, iring_off = -1;
};

struct Launch {
  cudaStream_t stream = nullptr;
  int* err = nullptr;  // device error slot (int[4])
  int num_sms = 1;
  int device = 0;
  // Arrival counters, zero between kernels: a kernel that uses them leaves them zero again (the split-K GEMV's
  // last block per tile reduces the partial sums; one stream, so kernels never share them concurrently).
  unsigned* arrivals = nullptr;
  int64_t n_arrivals = 0;
};

// ---- elementwise and row ops (cuda_elementwise.cu)
void embed(const Launch& L, const int32_t* tokens, int64_t M, const void* table, bool table_bf16, int64_t V,
           int64_t D, int hc, float* X);
// bf16_out: the output rounded to bf16 in the same pass (Backend's bf16_out).
void rms_norm(const Launch& L, const float* x, int64_t rows, int64_t D, const float* w, float eps, float* y,
              bool bf16_out);
void rope(const Launch& L, float* x, int64_t M, int64_t H, int64_t hd, const int32_t* pos, const void* freqs,
          bool freqs_f64, int64_t half, bool inverse, bool bf16_out);
void round_bf16(const Launch& L, float* x, int64_t n);
void scale(const Launch& L, float* x, int64_t n, float alpha);
void fp8_roundtrip(const Launch& L, float* x, int64_t rows, int64_t row, int64_t prefix, int64_t block);
void hadamard_fp4(const Launch& L, float* x, int64_t vecs, int64_t dim, float norm);
void kv_roundtrip(const Launch& L, float* x, int64_t rows, const DevCodec& c);
void gather_rows(const Launch& L, const uint8_t* x, int64_t x_rows, int64_t row_bytes, const int32_t* rows,
                 int64_t n, uint8_t* out);
struct DevHc {
  const float* fn = nullptr;
  const float* base = nullptr;
  const float* scale = nullptr;
  int hc = 4, D = 0, iters = 20;
  float norm_eps = 1e-6f, hc_eps = 1e-6f;
};
// `ws`: hc_ws_bytes(M, p, num_sms) bytes of device scratch for the split mixing dots.
size_t hc_ws_bytes(int64_t M, const DevHc& p, int num_sms);
void hc_pre(const Launch& L, const float* X, int64_t M, const DevHc& p, float* ws, float* y, float* post, float* comb,
            bool bf16_out);
void hc_post(const Launch& L, const float* y, const float* X, const float* post, const float* comb, int64_t M,
             int hc, int64_t D, float* Xout, bool bf16_out);
void hc_head(const Launch& L, const float* X, int64_t M, const DevHc& p, float* ws, float* y);

// ---- linear (cuda_linear.cu). x [M, groups * in] -> y [M, out]. `ws` is device scratch of
// linear_ws_bytes(...) bytes (quantized activations, split-K partials).
struct LinearCall {
  const float* x = nullptr;
  int64_t M = 0, ldx = 0;  // ldx: row stride of x in floats
  DevWeight w;
  int groups = 1;
  bool act_fp8 = false, out_bf16 = false;
  bool bf16_input = false;  // LinearOpts::bf16_input
  float* y = nullptr;
  int64_t ldy = 0;
};
int64_t linear_ws_bytes(const LinearCall& c, int num_sms);
void linear(const Launch& L, const LinearCall& c, void* ws);
// Per-128 FP8 quantization of M rows of K values (the reference's activation round trip) as e4m3 codes, dense
// [M, K], and their power-of-two scales [M, K / 128], for the tensor-core kernels.
void quantize_fp8_codes(const Launch& L, const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* codes,
                        float* scales);
// The same round trip's values as bf16 (exact: an e4m3 code times a power of two), dense [M, K].
void quantize_fp8_bf16(const Launch& L, const float* x, int64_t M, int64_t K, int64_t ldx, uint16_t* values);

// ---- KV cache ops, attention, compressor (cuda_kv.cu)
void window_store(const Launch& L, const float* kv, int64_t hd, const DevMeta& m, const int32_t* snap_item,
                  const int32_t* snap_end, int64_t n_snaps, const DevView& v);
void store_entries(const Launch& L, const float* src, int64_t dim, const int32_t* e_item, const int32_t* e_index,
                   int64_t n, const DevMeta& m, const DevView& v, bool indexer);
void arena_copy(const Launch& L, uint8_t* arena, int64_t arena_bytes, const int64_t* copies, int64_t n);
struct DevAttention {
  const float* q = nullptr;    // [M, H, hd]
  const float* kv = nullptr;   // [M, hd]
  const float* sink = nullptr;  // [H]
  const int32_t* selected = nullptr;
  int64_t n_sel = 0;
  DevMeta meta;
  DevView view;
  int64_t H = 0, hd = 0;
  float scale = 1.f;
  bool probs_bf16 = false;
  bool bf16_operands = false;  // AttentionArgs::bf16_operands
  float* out = nullptr;
  int64_t max_comp = 0;  // upper bound of compressed keys per row (host-known)
  // DSpark's block pass (ratio-0 layers only): every row of an item sees the window before the item's start and
  // all of the item's own rows, instead of the causal window ending at its own position.
  bool bidirectional = false;
};
// ws: attention_ws_bytes (key-split partials; 0 when one block per row and head group suffices).
int64_t attention_ws_bytes(const DevAttention& a, int num_sms);
void attention(const Launch& L, const DevAttention& a, void* ws);
struct DevIndexTopk {
  const float* q = nullptr;  // [M, IH, ID]
  const float* w = nullptr;  // [M, IH]
  DevMeta meta;
  DevView view;
  int64_t heads = 0, dim = 0, k = 0;
  bool bf16 = false;
  float* scratch = nullptr;
  int64_t max_entries = 0;
  int32_t* out = nullptr;
};
void index_topk(const Launch& L, const DevIndexTopk& a);
struct DevCompress {
  int ratio = 4, coff = 2, d = 0;
  bool indexer = false;
  const float* u = nullptr;
  const float* g = nullptr;
  const float* ape = nullptr;
  DevMeta meta;
  const int32_t *e_row = nullptr, *e_item = nullptr, *e_index = nullptr;
  int64_t n_entries = 0;
  const int32_t *s_item = nullptr, *s_end = nullptr;
  int64_t n_snaps = 0;
  DevView view;
  float* out = nullptr;
};
void compress(const Launch& L, const DevCompress& a);

// ---- routing and MoE (cuda_moe.cu)
struct DevRoute {
  const float* logits = nullptr;
  int64_t M = 0;
  int E = 0, k = 0, score_func = 0;
  const float* bias = nullptr;
  const int32_t* tid2eid = nullptr;
  int64_t vocab = 0;
  const int32_t* tokens = nullptr;
  bool normalize = true;
  float route_scale = 1.f;
  int32_t* experts = nullptr;
  float* weights = nullptr;
};
void route(const Launch& L, const DevRoute& a);
struct DevMoe {
  const float* x = nullptr;  // [M, D]
  const int32_t* experts = nullptr;
  const float* weights = nullptr;
  int64_t M = 0, K = 0, D = 0, inter = 0, E = 0;
  const DevWeight* table = nullptr;  // device array [E * 3]: w1, w2, w3 of each routed expert
  bool scales4 = false;              // every routed expert's scales 4-byte aligned, with scale_cols % 4 == 0
  DevWeight w1, w2, w3;              // expert 0's (format and shapes shared by all experts)
  const DevWeight* shared = nullptr;  // host array [3] or null
  float swiglu_limit = 0;
  bool act_fp8 = false, out_bf16 = false, round_hidden = false, round_out = false;
  float* out = nullptr;
};
int64_t moe_ws_bytes(int64_t M, int64_t K, int64_t D, int64_t inter, int64_t E, int num_sms);
// ws: moe_ws_bytes; lin_ws: linear_ws_bytes of the largest shared-expert linear.
void moe(const Launch& L, const DevMoe& a, void* ws, void* lin_ws);

// ---- bench helpers (cuda_linear.cu)
// Sum of n floats (a read-bandwidth probe); result in *out (device).
void reduce_sum(const Launch& L, const float* x, int64_t n, float* out);
// Dense FP8 mma.sync loop: returns FLOPs issued (2 * 16 * 8 * 32 per mma); writes a sink value.
double fp8_mma_peak(const Launch& L, float* sink, int iters);
// Dense bf16 mma.sync (m16n8k16) loop: FLOPs issued; the native tensor-core rate of the bf16 kernels.
double bf16_mma_peak(const Launch& L, float* sink, int iters);

}  // namespace dsv4::cuda

namespace dsv4 {
class Backend;
}
namespace dsv4::cuda {
// The launch context of a CUDA backend (bench and tests time kernels on its stream); throws for other backends.
Launch launch_of(Backend& be);
}  // namespace dsv4::cuda
