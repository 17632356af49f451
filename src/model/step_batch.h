// What one forward pass computes: chunks of several sequences at arbitrary positions (prefill chunks and
// decode steps mixed). Plain data: the step plan carries it to every rank. Everything the host must know about
// the step (which compressed entries it completes, which block ends it reaches) follows from these positions.
#pragma once
#include <cstdint>
#include <vector>

namespace dsv4 {

enum class LogitRows : uint8_t { None, Last, All };

struct StepItem {
  int32_t slot = 0;             // the sequence's slot in the KV arena (window ring, compressor rings)
  int64_t start = 0;            // position of tokens[0]; positions [0, start) are already in the KV cache
  std::vector<int32_t> tokens;  // processed at positions start, start + 1, ...
  std::vector<int32_t> blocks;  // the sequence's KV blocks from position 0; must cover [0, start + size)
  LogitRows logits = LogitRows::Last;
  // MTP batches only: per token, the row of the model's hidden store whose residual streams it combines with.
  std::vector<int32_t> hidden;
};

// A batch runs either the main model or the MTP drafter (spec §2.10) alone. An MTP item's token t is the token
// at position start + t + 1, combined with the main model's last-layer streams at position start + t (hidden[t]
// names them in the hidden store: rows [0, max_rows) hold the last main batch with keep_hidden, in its row
// order; row max_rows + k the k-th logit row of the last MTP batch, for the drafter's next recursive step). Its
// KV is the MTP layer's window ring at position start + t.
// A DSpark drafter batch (spec §7.1, model/dspark.cpp). Block: each item is one block [t, noise...] at
// positions start ... (the stages over the block, attention bidirectional inside it and over the stages' rings,
// which it does not write); its logits are the drafter head's, one row per block position. Markov: each item is
// one token, the previous draft; its logits are the Markov head's term markov_w2 . markov_w1[token] for the
// next draft position (the caller adds it to that position's block logits, one position at a time).
enum class DSparkPass : uint8_t { None, Block, Markov };

struct StepBatch {
  std::vector<StepItem> items;
  bool mtp = false;
  DSparkPass dspark = DSparkPass::None;
  bool keep_hidden = false;  // main batch: keep every row's last-layer streams for the MTP batch that follows
  int64_t rows() const {
    int64_t n = 0;
    for (auto& it : items) n += int64_t(it.tokens.size());
    return n;
  }
  int64_t logit_rows() const {
    int64_t n = 0;
    for (auto& it : items)
      n += it.logits == LogitRows::All ? int64_t(it.tokens.size()) : it.logits == LogitRows::Last ? 1 : 0;
    return n;
  }
};

// Upper bounds of a step, fixed at start: they size the per-step workspace (one allocation, fixed addresses).
struct StepLimits {
  int64_t max_rows = 2048;        // tokens per step (max_num_batched_tokens)
  int64_t max_items = 64;         // sequences per step
  int64_t max_logit_rows = 64;    // rows whose logits are returned
  int64_t max_context = 8192;     // positions per sequence (max_model_len)
};

}  // namespace dsv4
