// The DSpark block drafter of DeepSeek-V4-Flash-0731 (spec §7.1): the parts of its forward that are its own.
//
// Where the semantics come from: the official DSpark code was not read first-hand; spec §7.1 describes it from
// third-party ports of the official code (spec §8, item 5). Everything that rests on those ports is here or is
// marked "DSpark" in Dsv4Model::forward, so a correction touches this file (and those marked lines):
//  - context feature: per position, the mean over the hc streams of the residual entering each target layer
//    (dspark_target_layer_ids), concatenated in that order; main_x = RMSNorm(main_proj . feature; main_norm);
//  - every position the main model computes writes, in every stage, the window entry RoPE(RMSNorm(wkv . main_x))
//    (the stage's own wkv / kv_norm, regime-A RoPE, the KV format's rounding) into that stage's ring; rejected
//    verify positions are put back like the model's own (runtime/step_plan.h), so the rings hold accepted ones;
//  - a block pass: ids [t, noise x (block - 1)] at the positions after the last computed one, embedded on every
//    stream, through the stages as ordinary ratio-0 blocks whose attention sees the stage's ring (the window
//    before the block) and all block positions (bidirectional), writing no KV; then HyperHead, norm, head;
//  - Markov head: draft i's logits are the block's row i plus markov_w2 . markov_w1[prev], prev = t for i = 0
//    and draft i - 1 after, so drafts are drawn one after the other (runtime/dspark_drafting.cpp);
//  - the confidence head is not used (no file says how it gates the drafts; spec §7.1 gives only its formula).
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "model/dsv4_model.h"

namespace dsv4 {

void Dsv4Model::enable_dspark(const StepLimits& lim) {
  DSV4_CHECK(w_.drafter == Drafter::DSpark && int64_t(w_.layers.size()) == cfg_.n_layers + cfg_.n_dspark_stages,
             "enable_dspark: the DSpark weights are not loaded");
  DSV4_CHECK(cfg_.n_dspark_stages > 0 && cfg_.dspark_block_size > 0 && !cfg_.dspark_target_layer_ids.empty(),
             "enable_dspark: the config has no DSpark drafter");
  const int64_t hc = cfg_.hc_mult, D = cfg_.dim, M = std::max<int64_t>(lim.max_rows, 1);
  const int64_t post_bytes = M * hc * 4, y_bytes = M * D * 4, comb_bytes = M * hc * hc * 4;
  dspark_buf_ = be_.alloc(size_t(post_bytes + y_bytes + comb_bytes), BufferUsage::Workspace);
  ds_zero_post_ = Tensor(dspark_buf_.get(), 0, DType::F32, {M, hc});
  ds_zero_y_ = Tensor(dspark_buf_.get(), post_bytes, DType::F32, {M, D});
  ds_mean_comb_ = Tensor(dspark_buf_.get(), post_bytes + y_bytes, DType::F32, {M, hc * hc});
  be_.fill(ds_zero_post_, 0);
  be_.fill(ds_zero_y_, 0);
  // 1 / hc is a power of two for hc = 4 (V4's value): the products are exact and the mean is the plain sum / hc.
  const std::vector<float> comb(size_t(M * hc * hc), 1.0f / float(hc));
  be_.upload(ds_mean_comb_, comb.data(), comb.size() * 4);
  ds_target_.assign(size_t(cfg_.n_layers), -1);
  for (size_t k = 0; k < cfg_.dspark_target_layer_ids.size(); ++k) {
    const int l = cfg_.dspark_target_layer_ids[k];
    DSV4_CHECK(ds_target_[size_t(l)] < 0, "dspark_target_layer_ids names layer {} twice", l);
    ds_target_[size_t(l)] = int(k);
  }
}

// hc_post with post = 0 and every comb entry 1 / hc: Xout[m, k] = sum_j X[m, j] / hc for every stream k.
void Dsv4Model::dspark_stream_mean(const Tensor& X, const Tensor& means) const {
  const int64_t M = X.rows();
  be_.hc_post(ds_zero_y_.rows(0, M), X, ds_zero_post_.rows(0, M), ds_mean_comb_.rows(0, M), cfg_.hc_mult, means);
}

void Dsv4Model::dspark_main_x(const Tensor& means, const Tensor& fidx, const Tensor& feat, const Tensor& x) const {
  const int64_t D = cfg_.dim, nt = int64_t(cfg_.dspark_target_layer_ids.size()), M = x.rows();
  const bool ref = numerics_ == Numerics::Reference;
  // Stream 0 of each target layer's means, side by side: row m = [mean_40(m), mean_41(m), mean_42(m)].
  be_.gather_rows(means.view({means.rows() * cfg_.hc_mult, D}), fidx, feat.view({M * nt, D}));
  be_.linear(feat, w_.dspark.main_proj, x, {ref, ref});
  be_.rms_norm(x, D, w_.dspark.main_norm, float(cfg_.rms_norm_eps), x, ref);
}

void Dsv4Model::dspark_markov(const Tensor& tokens, const Tensor& e, const Tensor& logits) const {
  be_.embed(tokens, w_.dspark.markov_w1.data, 1, e);  // a bf16 [vocab, rank] table
  be_.linear(e, w_.dspark.markov_w2, logits, {});  // fp32 math, as the head's logits it is added to
}

}  // namespace dsv4
