#include "runtime/grammar/matcher.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "runtime/grammar/mask_worker.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::grammar {

GrammarMetrics& grammar_metrics() {
  static GrammarMetrics m;
  return m;
}

// ---- vocabulary trie

std::shared_ptr<const Vocabulary> Vocabulary::from_tokenizer(const Tokenizer& tok, bool keep_markers) {
  const int32_t V = tok.vocab_size();
  std::vector<std::string> bytes(static_cast<size_t>(V));
  for (int32_t id = 0; id < V; ++id) {
    if (!tok.is_token(id) || id == Tokenizer::kEos) continue;
    if (tok.is_special(id)) {
      const bool marker = id == Tokenizer::kThinkEnd || tok.token_bytes(id) == "｜DSML｜";
      if (!marker || !keep_markers) continue;
    }
    bytes[size_t(id)] = std::string(tok.token_bytes(id));
  }
  return from_bytes(std::move(bytes), {Tokenizer::kEos});
}

std::shared_ptr<const Vocabulary> Vocabulary::from_bytes(std::vector<std::string> bytes,
                                                         std::vector<int32_t> end_tokens) {
  auto v = std::make_shared<Vocabulary>();
  v->size_ = int32_t(bytes.size());
  v->bytes_ = std::move(bytes);
  for (int32_t e : end_tokens) {
    DSV4_CHECK(e >= 0 && e < v->size_, "vocabulary: end token {} out of range", e);
    v->bytes_[size_t(e)].clear();
  }
  v->end_ = std::move(end_tokens);
  v->build();
  return v;
}

bool Vocabulary::is_end(int32_t id) const { return std::find(end_.begin(), end_.end(), id) != end_.end(); }

void Vocabulary::build() {
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < size_; ++i)
    if (!bytes_[size_t(i)].empty()) ids.push_back(i);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return bytes_[size_t(a)] != bytes_[size_t(b)] ? bytes_[size_t(a)] < bytes_[size_t(b)] : a < b;
  });
  // Preorder: sorted order visits a node's tokens before its children's; one pass with a path stack.
  nodes_.clear();
  toks_.clear();
  std::vector<uint32_t> path;  // node index per depth - 1
  std::string prev;
  for (int32_t id : ids) {
    const std::string& s = bytes_[size_t(id)];
    DSV4_CHECK(s.size() < 65535, "vocabulary: token {} is too long", id);
    size_t common = 0;
    while (common < path.size() && common < s.size() && prev[common] == s[common]) ++common;
    while (path.size() > common) {
      nodes_[path.back()].end = uint32_t(nodes_.size());
      path.pop_back();
    }
    for (size_t d = common; d < s.size(); ++d) {
      nodes_.push_back({uint8_t(s[d]), uint16_t(d + 1), 0, uint32_t(toks_.size()), uint32_t(toks_.size())});
      path.push_back(uint32_t(nodes_.size() - 1));
    }
    Node& last = nodes_[path.back()];
    // Tokens of a node are contiguous: equal strings are adjacent in the sort and end at the same node.
    if (last.tok_begin == last.tok_end) last.tok_begin = last.tok_end = uint32_t(toks_.size());
    toks_.push_back(id);
    last.tok_end = uint32_t(toks_.size());
    max_depth_ = std::max<uint16_t>(max_depth_, uint16_t(s.size()));
    prev = s;
  }
  while (!path.empty()) {
    nodes_[path.back()].end = uint32_t(nodes_.size());
    path.pop_back();
  }
}

// ---- compiled grammar

CompiledGrammar::CompiledGrammar(Grammar g, std::shared_ptr<const Vocabulary> vocab, std::string description)
    : grammar_(std::make_shared<const Grammar>(std::move(g))),
      automaton_(std::make_unique<GrammarAutomaton>(grammar_)),
      vocab_(std::move(vocab)),
      description_(std::move(description)) {}

size_t CompiledGrammar::cached_masks() const {
  std::lock_guard<std::mutex> lk(mu_);
  return masks_.size();
}

std::shared_ptr<const Mask> CompiledGrammar::mask(const GrammarAutomaton::State& s) const {
  const uint64_t key = s.epoch << 32 | uint32_t(s.id);
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    auto it = masks_.find(key);
    if (it == masks_.end()) {
      masks_[key].st = Slot::St::Computing;
      break;
    }
    if (it->second.st == Slot::St::Ready) return it->second.mask;
    if (it->second.st == Slot::St::Queued) {  // the worker has not started it: compute it here
      it->second.st = Slot::St::Computing;
      break;
    }
    cv_.wait(lk);  // another thread computes it
  }
  lk.unlock();
  std::shared_ptr<const Mask> m;
  try {
    m = compute_mask(s);
  } catch (...) {
    lk.lock();
    masks_.erase(key);
    cv_.notify_all();
    throw;
  }
  lk.lock();
  publish(key, m);
  return m;
}

void CompiledGrammar::publish(uint64_t key, std::shared_ptr<const Mask> m) const {
  if (masks_.size() >= kMaxCachedMasks)  // drop ready and queued slots; ones being computed have waiters
    for (auto it = masks_.begin(); it != masks_.end();)
      it = it->second.st == Slot::St::Computing ? std::next(it) : masks_.erase(it);
  Slot& slot = masks_[key];
  slot.st = Slot::St::Ready;
  slot.mask = std::move(m);
  cv_.notify_all();
}

void CompiledGrammar::prefetch(const std::shared_ptr<const CompiledGrammar>& g, const GrammarAutomaton::State& s) {
  if (!mask_prefetch_enabled() || s.dead()) return;
  const uint64_t key = s.epoch << 32 | uint32_t(s.id);
  {
    std::lock_guard<std::mutex> lk(g->mu_);
    if (!g->masks_.emplace(key, Slot{}).second) return;  // cached or under way
  }
  grammar_metrics().prefetched.fetch_add(1, std::memory_order_relaxed);
  mask_worker_submit([g, s] { g->run_prefetch(s); });
}

void CompiledGrammar::run_prefetch(const GrammarAutomaton::State& s) const {
  const uint64_t key = s.epoch << 32 | uint32_t(s.id);
  std::unique_lock<std::mutex> lk(mu_);
  auto it = masks_.find(key);
  if (it == masks_.end() || it->second.st != Slot::St::Queued) return;  // taken by the sampler, or dropped
  it->second.st = Slot::St::Computing;
  lk.unlock();
  std::shared_ptr<const Mask> m;
  try {
    m = compute_mask(s);
  } catch (...) {  // the sampler will compute it (and report the error) itself
    lk.lock();
    masks_.erase(key);
    cv_.notify_all();
    return;
  }
  lk.lock();
  publish(key, std::move(m));
}

std::shared_ptr<const Mask> CompiledGrammar::compute_mask(const GrammarAutomaton::State& s) const {
  grammar_metrics().mask_computed.fetch_add(1, std::memory_order_relaxed);
  const auto t0 = std::chrono::steady_clock::now();
  const Vocabulary& V = *vocab_;
  auto m = std::make_shared<Mask>((size_t(V.size()) + 63) / 64, 0);
  uint64_t* bits = m->data();
  GrammarAutomaton& A = *automaton_;
  A.with_lock(s, [&](int32_t root) {
    const auto& nodes = V.nodes();
    const int32_t* toks = V.node_tokens().data();
    std::vector<int32_t> st(size_t(V.max_depth()) + 1);
    st[0] = root;
    const size_t n = nodes.size();
    for (size_t i = 0; i < n;) {
      const Vocabulary::Node& nd = nodes[i];
      const int32_t t = A.trans_locked(st[nd.depth - 1u], nd.byte);
      if (t < 0) {
        i = nd.end;
        continue;
      }
      st[nd.depth] = t;
      for (uint32_t k = nd.tok_begin; k < nd.tok_end; ++k) bits[uint32_t(toks[k]) >> 6] |= 1ull << (toks[k] & 63);
      ++i;
    }
    if (A.accepting_locked(root))
      for (int32_t e : V.end_tokens()) bits[uint32_t(e) >> 6] |= 1ull << (e & 63);
    return 0;
  });
  grammar_metrics().walk_ns.fetch_add(uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now() - t0).count()),
                                      std::memory_order_relaxed);
  return m;
}

// ---- matcher

GrammarMatcher::GrammarMatcher(std::shared_ptr<const CompiledGrammar> g) : g_(std::move(g)) {
  state_ = g_->automaton().start();
}

bool GrammarMatcher::is_allowed(int32_t token) const {
  const Vocabulary& V = g_->vocab();
  if (token < 0 || token >= V.size()) return false;
  if (V.is_end(token)) return terminated_ || accepting();
  if (terminated_) return false;
  const std::string& b = V.bytes(token);
  if (b.empty()) return false;
  return !g_->automaton().step(state_, b).dead();
}

bool GrammarMatcher::accept_token(int32_t token) {
  const Vocabulary& V = g_->vocab();
  if (token < 0 || token >= V.size()) return false;
  if (V.is_end(token)) {
    if (!terminated_ && !accepting()) return false;
    terminated_ = true;
    return true;
  }
  if (terminated_) return false;
  const std::string& b = V.bytes(token);
  if (b.empty()) return false;
  return accept_bytes(b);
}

bool GrammarMatcher::accept_bytes(std::string_view bytes) {
  if (terminated_) return bytes.empty();
  auto next = g_->automaton().step(state_, bytes);
  if (next.dead()) return false;
  state_ = std::move(next);
  return true;
}

bool GrammarMatcher::accepting() const { return !terminated_ && g_->automaton().accepting(state_); }
bool GrammarMatcher::can_continue() const { return !terminated_ && g_->automaton().can_continue(state_); }

std::shared_ptr<const Mask> GrammarMatcher::mask() const {
  if (!terminated_) return g_->mask(state_);
  const Vocabulary& V = g_->vocab();
  auto m = std::make_shared<Mask>((size_t(V.size()) + 63) / 64, 0);
  for (int32_t e : V.end_tokens()) (*m)[uint32_t(e) >> 6] |= 1ull << (e & 63);
  return m;
}

void GrammarMatcher::prefetch_mask() const {
  if (!terminated_) CompiledGrammar::prefetch(g_, state_);
}

size_t GrammarMatcher::apply(std::span<float> logits) const {
  const auto t0 = std::chrono::steady_clock::now();
  const auto m = mask();
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const size_t n = logits.size(), words = m->size();
  float* l = logits.data();
  size_t allowed = 0;
  for (size_t w = 0; w * 64 < n; ++w) {
    const uint64_t bits = w < words ? (*m)[w] : 0;
    const size_t base = w * 64, e = std::min<size_t>(64, n - base);
    if (bits == ~0ull && e == 64) {
      allowed += 64;
      continue;
    }
    if (bits == 0) {
      std::fill(l + base, l + base + e, kNegInf);
      continue;
    }
    for (size_t k = 0; k < e; ++k) {
      if (bits >> k & 1) ++allowed;
      else l[base + k] = kNegInf;
    }
  }
  auto& M = grammar_metrics();
  M.mask_ns.fetch_add(uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now() - t0).count()),
                      std::memory_order_relaxed);
  M.mask_steps.fetch_add(1, std::memory_order_relaxed);
  return allowed;
}

}  // namespace dsv4::grammar
