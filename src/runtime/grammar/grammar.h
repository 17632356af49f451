// Grammars for constrained decoding: a byte-level recursive transition network (NFA fragments over bytes,
// plus rule calls for recursion) and its lazily determinized automaton.
//
// GrammarBuilder makes nodes and edges (byte ranges, epsilon, calls); the schema and regex compilers
// (json_schema.h, regex.h) build on Frag, a Thompson-style fragment with one entry and one exit node.
// A Grammar is immutable once built. GrammarAutomaton determinizes it on demand: a state is the set of
// configurations (call stack + node) reachable after some bytes, interned to an id; transitions per
// (state, byte) are computed once and cached. A state id is all a matcher needs (copy = rollback).
//
// Bounds (explicit): call depth kMaxCallDepth (deeper calls are not taken, so nesting stops there), at most
// kMaxConfigs configurations per state, at most max_states interned states (past that the cache is cleared
// and live matchers re-intern their state from its key: correctness never depends on the cache).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dsv4::grammar {

constexpr int kMaxCallDepth = 24;
constexpr size_t kMaxConfigs = 256;

struct Frag {
  uint32_t in = 0, out = 0;
};

struct ByteEdge {
  uint8_t lo, hi;
  uint32_t to;
};
struct CallEdge {
  uint32_t rule, ret;
};

struct Grammar {
  struct Node {
    std::vector<ByteEdge> bytes;
    std::vector<uint32_t> eps;
    std::vector<CallEdge> calls;
    int32_t ends_rule = -1;  // this node is the exit of that rule
  };
  std::vector<Node> nodes;
  std::vector<Frag> rules;  // rule 0 is the root: reaching its exit with an empty stack completes the text
  size_t num_edges() const;
};

class GrammarBuilder {
 public:
  GrammarBuilder();
  uint32_t node();
  void bytes(uint32_t from, uint32_t to, uint8_t lo, uint8_t hi) { g_.nodes[from].bytes.push_back({lo, hi, to}); }
  void eps(uint32_t from, uint32_t to) { g_.nodes[from].eps.push_back(to); }
  // A rule: declare first (for recursion), define later with its body fragment.
  uint32_t declare_rule();
  void define_rule(uint32_t rule, Frag body);
  Frag call(uint32_t rule);

  Frag empty();                      // matches ""
  Frag literal(std::string_view s);  // exactly these bytes
  Frag seq(std::initializer_list<Frag> parts);
  Frag seq(const std::vector<Frag>& parts);
  Frag alt(const std::vector<Frag>& parts);  // at least one
  Frag opt(Frag f);
  Frag star(Frag f);
  Frag plus(Frag f);
  size_t size() const { return g_.nodes.size(); }
  // Rule 0 (the root) = `root`; returns the grammar and leaves the builder empty.
  Grammar finish(Frag root);

 private:
  Grammar g_;
};

struct AutomatonStats {
  uint64_t states = 0, transitions = 0, resets = 0;
};

// Thread-safe (one mutex); shared by every request using the same grammar.
class GrammarAutomaton {
 public:
  static constexpr int32_t kDead = -1;
  explicit GrammarAutomaton(std::shared_ptr<const Grammar> g, size_t max_states = 1 << 16);

  // The key of a state: its configurations, flattened (canonical, comparable). Matchers hold one per state.
  using Key = std::shared_ptr<const std::vector<uint32_t>>;
  struct State {
    int32_t id = kDead;
    uint64_t epoch = 0;
    Key key;
    bool dead() const { return id == kDead; }
  };

  State start();
  // One byte, or several; a dead result means the bytes are not a prefix of any text of the grammar.
  State step(const State& s, uint8_t b);
  State step(const State& s, std::string_view bytes);
  bool accepting(const State& s);  // the text so far is complete
  bool can_continue(const State& s);  // some byte may follow

  // f(id) under the lock, `id` = s in the current epoch, for bulk walks (token masks) with the *_locked calls.
  template <typename F>
  auto with_lock(const State& s, F&& f) {
    std::lock_guard<std::mutex> lk(mu_);
    if (full_locked()) reset();
    const int32_t id = resolve(s);
    return f(id);
  }
  // For use inside with_lock only.
  int32_t trans_locked(int32_t id, uint8_t b) {
    const size_t at = size_t(id) * 256 + b;
    int32_t t = rows_[at];
    if (t == kUnknown) {
      t = compute(id, b);  // may intern a state, growing rows_: no reference across it
      rows_[at] = t;
    }
    return t;
  }
  bool accepting_locked(int32_t id) const { return info_[size_t(id)].accepting; }
  bool can_continue_locked(int32_t id) const { return info_[size_t(id)].can_continue; }
  uint64_t epoch_locked() const { return epoch_; }
  State make_state_locked(int32_t id) const;
  bool full_locked() const { return keys_.size() >= max_states_; }

  const Grammar& grammar() const { return *g_; }
  AutomatonStats stats();

 private:
  static constexpr int32_t kUnknown = -2;
  struct Info {
    bool accepting = false, can_continue = false;
  };
  int32_t resolve(const State& s);  // id in the current epoch (re-interns after a reset)
  int32_t intern(std::vector<uint32_t> key);
  int32_t compute(int32_t id, uint8_t b);
  void reset();
  // The closure of one configuration (flattened as in a key, without the accepting word), memoized: a byte
  // range edge leads every byte of the range to the same configuration.
  struct ClosureResult {
    std::vector<uint32_t> configs;
    bool accepting = false;
  };
  const ClosureResult& closure_of(const std::vector<uint32_t>& config);
  std::unordered_map<std::string, ClosureResult> memo_;

  std::shared_ptr<const Grammar> g_;
  size_t max_states_;
  std::mutex mu_;
  uint64_t epoch_ = 1;
  std::unordered_map<std::string, int32_t> index_;
  std::vector<Key> keys_;
  std::vector<Info> info_;
  std::vector<int32_t> rows_;  // [state][256]
  AutomatonStats stats_;
};

}  // namespace dsv4::grammar
