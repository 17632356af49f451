// CPU backend: MoE routing and the whole MoE layer (spec §2.8). As the old engine: each expert runs once on all
// the rows routed to it; row sums accumulate experts in ascending expert id, then the shared expert.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/quant.h"

namespace dsv4 {

namespace cpu {

void topk_lowest_first(const float* scores, int64_t n, int64_t k, int32_t* out) {
  k = std::min(k, n);
  thread_local std::vector<int32_t> idx;
  idx.resize(size_t(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t x, int32_t y) {
    return scores[x] > scores[y] || (scores[x] == scores[y] && x < y);
  });
  std::copy(idx.begin(), idx.begin() + k, out);
}

void CpuBackend::route(const RouteArgs& a) {
  auto s = op();
  check_dtype(a.logits, DType::F32, "route logits");
  const int64_t M = a.logits.rows(), E = a.logits.row_elems();
  const int k = a.k;
  DSV4_CHECK(k > 0 && k <= E, "route: top {} of {} experts", k, E);
  check_dtype(a.experts, DType::I32, "route experts");
  check_numel(a.experts, M * k, "route experts");
  check_numel(a.weights, M * k, "route weights");
  DSV4_CHECK(a.score_func >= 0 && a.score_func <= 2, "route: score function {}", a.score_func);
  const bool hash = a.tid2eid.valid();
  if (hash) {
    check_dtype(a.tid2eid, DType::I32, "route tid2eid");
    DSV4_CHECK(a.tid2eid.row_elems() == k, "route: tid2eid rows of {} for top {}", a.tid2eid.row_elems(), k);
    check_numel(a.tokens, M, "route tokens");
  } else if (a.bias.valid()) {
    check_numel(a.bias, E, "route bias");
  }
  const float* logits = ptr<float>(a.logits);
  const float* bias = !hash && a.bias.valid() ? ptr<float>(a.bias) : nullptr;
  int32_t* experts = ptr<int32_t>(a.experts);
  float* weights = ptr<float>(a.weights);
  if (hash)  // checked before the parallel loop: an exception must not leave an OpenMP region
    for (int64_t m = 0; m < M; ++m) {
      const int32_t tok = ptr<int32_t>(a.tokens)[m];
      DSV4_CHECK(tok >= 0 && tok < a.tid2eid.rows(), "route: token {} outside the hash table", tok);
      for (int j = 0; j < k; ++j) {
        const int32_t e = ptr<int32_t>(a.tid2eid)[int64_t(tok) * k + j];
        DSV4_CHECK(e >= 0 && e < E, "route: hash expert {} of {}", e, E);
      }
    }
  parallel_for(M, 16, [&](int64_t b, int64_t e) {
    std::vector<float> score(static_cast<size_t>(E)), biased(static_cast<size_t>(E));
    for (int64_t m = b; m < e; ++m) {
      const float* lg = logits + m * E;
      if (a.score_func == 2) {
        float mx = *std::max_element(lg, lg + E), sum = 0;
        for (int64_t j = 0; j < E; ++j) sum += (score[size_t(j)] = std::exp(lg[j] - mx));
        for (int64_t j = 0; j < E; ++j) score[size_t(j)] /= sum;
      } else {
        for (int64_t j = 0; j < E; ++j) {
          float x = lg[j];
          score[size_t(j)] = a.score_func == 1 ? sigmoid(x) : std::sqrt(x > 20.f ? x : std::log1p(std::exp(x)));
        }
      }
      int32_t* ex = experts + m * k;
      if (hash) {
        const int32_t tok = ptr<int32_t>(a.tokens)[m];
        for (int j = 0; j < k; ++j) ex[j] = ptr<int32_t>(a.tid2eid)[int64_t(tok) * k + j];
      } else {
        for (int64_t j = 0; j < E; ++j) biased[size_t(j)] = score[size_t(j)] + (bias ? bias[j] : 0.f);
        topk_lowest_first(biased.data(), E, k, ex);
      }
      float* wt = weights + m * k;
      float sum = 0;
      for (int j = 0; j < k; ++j) sum += (wt[j] = score[size_t(ex[j])]);
      // Softmax scores are already normalized over all experts; the old engine (and the reference) do not
      // renormalize them over the chosen k.
      for (int j = 0; j < k; ++j) wt[j] = (a.normalize && a.score_func != 2 ? wt[j] / sum : wt[j]) * a.route_scale;
    }
  });
}

namespace {

// h[m, :] = silu(min(g, limit)) * clamp(u, +-limit) * weight[m] in place of g (the old engine's swiglu).
void swiglu(float* gate, const float* up, int64_t M, int64_t N, float limit, const float* weight) {
  parallel_for(M, 16, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      const float wm = weight ? weight[m] : 1.f;
      for (int64_t i = 0; i < N; ++i) {
        float g = gate[m * N + i], u = up[m * N + i];
        if (limit > 0) {
          u = std::clamp(u, -limit, limit);
          g = std::min(g, limit);
        }
        gate[m * N + i] = g / (1.f + std::exp(-g)) * u * wm;
      }
    }
  });
}

}  // namespace

void CpuBackend::moe(const MoeArgs& a) {
  auto s = op();
  DSV4_CHECK(a.routed && a.shared, "moe: expert weights missing");
  check_dtype(a.x, DType::F32, "moe x");
  const int64_t M = a.x.rows(), D = a.x.row_elems(), K = a.experts.row_elems(), I = a.inter;
  const int64_t E = int64_t(a.routed->size());
  check_numel(a.experts, M * K, "moe experts");
  check_numel(a.weights, M * K, "moe weights");
  check_numel(a.out, M * D, "moe out");
  DSV4_CHECK(a.lin.groups == 1, "moe: grouped expert linears are not supported");
  DSV4_CHECK(a.scratch.nbytes() >= moe_scratch_bytes(M, K, D, I), "moe: {} scratch bytes (need {})",
             a.scratch.nbytes(), moe_scratch_bytes(M, K, D, I));
  if (M == 0) return;
  // Scratch layout (backend_factory.cpp sizes it): per expert at most max(M * K, M) rows of gathered input,
  // gate, up and output.
  const int64_t cap = std::max<int64_t>(M * K, M);
  float* xe = ptr<float>(a.scratch);
  float* g1 = xe + cap * D;
  float* g3 = g1 + cap * I;
  float* ye = g3 + cap * I;
  const float* x = ptr<float>(a.x);
  const int32_t* ex = ptr<int32_t>(a.experts);
  const float* wts = ptr<float>(a.weights);
  float* out = ptr<float>(a.out);

  auto run_expert = [&](const ExpertWeights& e, const float* xin, int64_t m, const float* w, int64_t I) {
    linear_rows(xin, D, m, e.w1, g1, I, a.lin.act_fp8, a.lin.out_bf16);
    linear_rows(xin, D, m, e.w3, g3, I, a.lin.act_fp8, a.lin.out_bf16);
    swiglu(g1, g3, m, I, a.swiglu_limit, w);
    if (a.round_hidden) dsv4::round_bf16(g1, m * I);
    linear_rows(g1, I, m, e.w2, ye, D, a.lin.act_fp8, a.lin.out_bf16);
  };
  const int64_t e_begin = a.expert_begin, e_end = a.expert_end < 0 ? E : a.expert_end;
  const int64_t IS = a.shared_inter ? a.shared_inter : I;
  DSV4_CHECK(0 <= e_begin && e_begin <= e_end && e_end <= E && IS <= I, "moe: expert range [{}, {}) of {}, widths {}/{}",
             e_begin, e_end, E, I, IS);
  if (a.share)
    DSV4_CHECK(a.share->copies.size() == size_t(E) && a.share->offset.size() == size_t(E + 1) &&
                   a.share->here.size() == size_t(a.share->offset.back()),
               "moe: an expert share for {} experts", a.share->copies.size());
  // Rows of each expert, in row order (the host can read the routing: CPU tensors are host memory).
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(static_cast<size_t>(E));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = ex[m * K + j];
      DSV4_CHECK(e >= 0 && e < E, "moe: expert {} of {}", e, E);
      if (a.share && !a.share->computes(e, m)) continue;  // EPLB: another replica's row
      by_expert[size_t(e)].push_back({m, wts[m * K + j]});
    }
  std::fill(out, out + M * D, 0.f);
  std::vector<float> we;
  for (int64_t e = e_begin; e < e_end; ++e) {
    const auto& rows = by_expert[size_t(e)];
    if (rows.empty()) continue;
    DSV4_CHECK((*a.routed)[size_t(e)].w1.valid(), "moe: expert {} has rows here but its weights are not placed here", e);
    const int64_t m = int64_t(rows.size());
    we.resize(size_t(m));
    for (int64_t r = 0; r < m; ++r) {
      std::memcpy(xe + r * D, x + rows[size_t(r)].first * D, sizeof(float) * size_t(D));
      we[size_t(r)] = rows[size_t(r)].second;
    }
    run_expert((*a.routed)[size_t(e)], xe, m, we.data(), I);
    for (int64_t r = 0; r < m; ++r) {
      float* o = out + rows[size_t(r)].first * D;
      const float* y = ye + r * D;
      for (int64_t dd = 0; dd < D; ++dd) o[dd] += y[dd];
    }
  }
  run_expert(*a.shared, x, M, nullptr, IS);
  for (int64_t i = 0; i < M * D; ++i) out[i] += ye[i];
  if (a.round_out) dsv4::round_bf16(out, M * D);
}

}  // namespace cpu
}  // namespace dsv4
