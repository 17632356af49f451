// Token-level constrained decoding on top of the byte automaton (grammar.h):
//   Vocabulary       every token's bytes as one trie (preorder array), built once per tokenizer;
//   CompiledGrammar  grammar + automaton + vocabulary + a cache of per-state token masks, shared by all
//                    requests that use the same constraint (thread-safe);
//   GrammarMatcher   one request's position: cheap to copy, and a copy is the rollback point (speculative
//                    decoding checks drafts with accept_token on a copy and keeps or drops it).
//
// A token is allowed when its bytes, appended to the text so far, leave a prefix of some text of the
// grammar (exact across token boundaries: the mask walks the trie through the automaton byte by byte,
// pruning a subtree at the first dead byte). End tokens (EOS, stop ids) carry no bytes: they are allowed
// exactly when the text is complete; once one is accepted only end tokens are allowed. A mask is computed
// once per automaton state and cached (most steps repeat a state: inside a string, after a key...).
// Prefetch: once a request's token is sampled its next state is known, so its mask is computed on a
// background thread while the model runs the next forward pass (mask_worker.h); the sampler then finds it
// cached. Whoever needs a mask first computes it, the others wait for that one result: never computed twice.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/grammar/grammar.h"

namespace dsv4 {
class Tokenizer;
}

namespace dsv4::grammar {

class Vocabulary {
 public:
  // Every token of `tok` by its decoded bytes, except end tokens (EOS) and special added tokens other than
  // `</think>` and `｜DSML｜` (the markers the output parser reads); those two are left out too when
  // `keep_markers` is false (text rendered with skip_special_tokens would not show them).
  static std::shared_ptr<const Vocabulary> from_tokenizer(const Tokenizer& tok, bool keep_markers = true);
  // Tests: token i spells bytes[i] (empty = not a token); `end_tokens` are the EOS-like ids.
  static std::shared_ptr<const Vocabulary> from_bytes(std::vector<std::string> bytes, std::vector<int32_t> end_tokens);

  int32_t size() const { return size_; }  // mask length in tokens
  const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }
  const std::vector<int32_t>& end_tokens() const { return end_; }
  bool is_end(int32_t id) const;
  size_t trie_nodes() const { return nodes_.size(); }

  struct Node {
    uint8_t byte;
    uint16_t depth;     // 1 = first byte
    uint32_t end;       // index past this node's subtree
    uint32_t tok_begin, tok_end;  // tokens ending here: toks_[tok_begin, tok_end)
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<int32_t>& node_tokens() const { return toks_; }
  uint16_t max_depth() const { return max_depth_; }

 private:
  void build();
  int32_t size_ = 0;
  std::vector<std::string> bytes_;  // per id ("" = not in the trie)
  std::vector<int32_t> end_;
  std::vector<Node> nodes_;
  std::vector<int32_t> toks_;
  uint16_t max_depth_ = 0;
};

using Mask = std::vector<uint64_t>;  // bit t = token t allowed

class CompiledGrammar {
 public:
  CompiledGrammar(Grammar g, std::shared_ptr<const Vocabulary> vocab, std::string description = {});
  GrammarAutomaton& automaton() const { return *automaton_; }
  const Vocabulary& vocab() const { return *vocab_; }
  const std::string& description() const { return description_; }
  const Grammar& grammar() const { return *grammar_; }
  // The allowed tokens in state s (end tokens included iff s is accepting). Cached per state.
  std::shared_ptr<const Mask> mask(const GrammarAutomaton::State& s) const;
  // Starts computing the mask of s on the background worker unless it is cached or under way.
  static void prefetch(const std::shared_ptr<const CompiledGrammar>& g, const GrammarAutomaton::State& s);
  size_t cached_masks() const;

 private:
  std::shared_ptr<const Mask> compute_mask(const GrammarAutomaton::State& s) const;
  void publish(uint64_t key, std::shared_ptr<const Mask> m) const;  // under mu_
  void run_prefetch(const GrammarAutomaton::State& s) const;
  std::shared_ptr<const Grammar> grammar_;
  std::unique_ptr<GrammarAutomaton> automaton_;
  std::shared_ptr<const Vocabulary> vocab_;
  std::string description_;
  // A slot per state (epoch << 32 | id): queued for the worker, being computed (others wait on cv_), or ready.
  struct Slot {
    enum class St { Queued, Computing, Ready } st = St::Queued;
    std::shared_ptr<const Mask> mask;
  };
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable std::unordered_map<uint64_t, Slot> masks_;
  static constexpr size_t kMaxCachedMasks = 2048;  // 16 KiB each at 129K tokens
};

class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const CompiledGrammar> g);

  // Advances over a token if it is allowed; false (and no change) otherwise.
  bool accept_token(int32_t token);
  bool accept_bytes(std::string_view bytes);  // raw bytes (forced text); false and no change if not allowed
  bool is_allowed(int32_t token) const;
  std::shared_ptr<const Mask> mask() const;  // the allowed tokens now
  // Sets disallowed logits to -inf (logits.size() may exceed the vocabulary: the rest is disallowed).
  // Returns the number of allowed tokens.
  size_t apply(std::span<float> logits) const;
  void prefetch_mask() const;  // the mask of the current state, computed in the background (mask_worker.h)

  bool accepting() const;   // the text is complete (an end token may follow)
  bool terminated() const { return terminated_; }  // an end token was accepted
  bool can_continue() const;  // some more text may follow
  const CompiledGrammar& compiled() const { return *g_; }
  const GrammarAutomaton::State& state() const { return state_; }

 private:
  std::shared_ptr<const CompiledGrammar> g_;
  GrammarAutomaton::State state_;
  bool terminated_ = false;
};

// Process-wide counters for /metrics.
struct GrammarMetrics {
  // mask_ns: sampling-path time (waiting for a prefetched mask, or computing it, and applying it);
  // walk_ns: vocabulary walks wherever they ran (the background worker's included).
  std::atomic<uint64_t> mask_ns{0}, mask_steps{0}, mask_computed{0}, walk_ns{0}, prefetched{0};
  std::atomic<uint64_t> compile_ns{0}, compiles{0};
};
GrammarMetrics& grammar_metrics();

}  // namespace dsv4::grammar
