#include "runtime/grammar/grammar.h"

#include <algorithm>
#include <set>

#include "core/error.h"

namespace dsv4::grammar {

size_t Grammar::num_edges() const {
  size_t n = 0;
  for (const auto& nd : nodes) n += nd.bytes.size() + nd.eps.size() + nd.calls.size();
  return n;
}

// ---- builder

GrammarBuilder::GrammarBuilder() { g_.rules.push_back({}); }  // rule 0: the root, defined by finish()

uint32_t GrammarBuilder::node() {
  DSV4_CHECK(g_.nodes.size() < (1u << 24), "grammar: more than 16M nodes (the schema is too large)");
  g_.nodes.emplace_back();
  return uint32_t(g_.nodes.size() - 1);
}

uint32_t GrammarBuilder::declare_rule() {
  g_.rules.push_back({});
  return uint32_t(g_.rules.size() - 1);
}

void GrammarBuilder::define_rule(uint32_t rule, Frag body) {
  // A fresh exit node marks the rule's end (a body's own exit may be shared by epsilon paths).
  const uint32_t out = node();
  eps(body.out, out);
  g_.nodes[out].ends_rule = int32_t(rule);
  g_.rules[rule] = {body.in, out};
}

Frag GrammarBuilder::call(uint32_t rule) {
  Frag f{node(), node()};
  g_.nodes[f.in].calls.push_back({rule, f.out});
  return f;
}

Frag GrammarBuilder::empty() {
  const uint32_t n = node();
  return {n, n};
}

Frag GrammarBuilder::literal(std::string_view s) {
  Frag f = empty();
  for (unsigned char c : s) {
    const uint32_t n = node();
    bytes(f.out, n, c, c);
    f.out = n;
  }
  return f;
}

Frag GrammarBuilder::seq(std::initializer_list<Frag> parts) { return seq(std::vector<Frag>(parts)); }

Frag GrammarBuilder::seq(const std::vector<Frag>& parts) {
  if (parts.empty()) return empty();
  Frag f = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) {
    eps(f.out, parts[i].in);
    f.out = parts[i].out;
  }
  return f;
}

Frag GrammarBuilder::alt(const std::vector<Frag>& parts) {
  DSV4_CHECK(!parts.empty(), "grammar: an empty alternation");
  if (parts.size() == 1) return parts[0];
  Frag f{node(), node()};
  for (const Frag& p : parts) {
    eps(f.in, p.in);
    eps(p.out, f.out);
  }
  return f;
}

Frag GrammarBuilder::opt(Frag f) {
  Frag r{node(), node()};
  eps(r.in, f.in);
  eps(f.out, r.out);
  eps(r.in, r.out);
  return r;
}

Frag GrammarBuilder::star(Frag f) {
  Frag r{node(), node()};
  eps(r.in, r.out);
  eps(r.in, f.in);
  eps(f.out, r.in);
  return r;
}

Frag GrammarBuilder::plus(Frag f) {
  Frag r{node(), node()};
  eps(r.in, f.in);
  eps(f.out, r.in);
  eps(f.out, r.out);
  return r;
}

Grammar GrammarBuilder::finish(Frag root) {
  define_rule(0, root);
  for (uint32_t r = 1; r < g_.rules.size(); ++r)
    DSV4_CHECK(g_.rules[r].in != g_.rules[r].out || g_.nodes[g_.rules[r].out].ends_rule == int32_t(r),
               "grammar: rule {} declared but never defined", r);
  Grammar g = std::move(g_);
  g_ = Grammar{};
  g_.rules.push_back({});
  return g;
}

// ---- automaton
//
// Key layout: [accepting, then per configuration: length L, stack (L - 1 return nodes, bottom first), node].
// Only configurations whose node has byte edges are kept (the others cannot consume anything).

namespace {

using Config = std::vector<uint32_t>;  // stack..., node

struct Closure {
  const Grammar& g;
  std::set<Config> seen, kept;
  bool accepting = false;

  void visit(Config c) {
    if (!seen.insert(c).second) return;
    const uint32_t n = c.back();
    const Grammar::Node& nd = g.nodes[n];
    if (!nd.bytes.empty()) kept.insert(c);
    for (uint32_t e : nd.eps) {
      Config d = c;
      d.back() = e;
      visit(std::move(d));
    }
    if (c.size() <= size_t(kMaxCallDepth))
      for (const CallEdge& ce : nd.calls) {
        Config d = c;
        d.back() = ce.ret;
        d.push_back(g.rules[ce.rule].in);
        visit(std::move(d));
      }
    if (nd.ends_rule >= 0) {
      if (c.size() == 1) {
        if (nd.ends_rule == 0) accepting = true;
      } else {
        Config d(c.begin(), c.end() - 1);  // return: the caller's continuation is now the top
        visit(std::move(d));
      }
    }
  }

  std::vector<uint32_t> key() const {
    std::vector<uint32_t> k{accepting ? 1u : 0u};
    size_t n = 0;
    for (const Config& c : kept) {
      if (++n > kMaxConfigs) break;  // sound: fewer alternatives, never a wrong one
      k.push_back(uint32_t(c.size()));
      k.insert(k.end(), c.begin(), c.end());
    }
    return k;
  }
};

}  // namespace

GrammarAutomaton::GrammarAutomaton(std::shared_ptr<const Grammar> g, size_t max_states)
    : g_(std::move(g)), max_states_(max_states) {}

int32_t GrammarAutomaton::intern(std::vector<uint32_t> key) {
  std::string k(reinterpret_cast<const char*>(key.data()), key.size() * sizeof(uint32_t));
  auto it = index_.find(k);
  if (it != index_.end()) return it->second;
  const int32_t id = int32_t(keys_.size());
  Info info;
  info.accepting = key[0] != 0;
  info.can_continue = key.size() > 1;
  index_.emplace(std::move(k), id);
  keys_.push_back(std::make_shared<const std::vector<uint32_t>>(std::move(key)));
  info_.push_back(info);
  rows_.resize(rows_.size() + 256, kUnknown);
  ++stats_.states;
  return id;
}

void GrammarAutomaton::reset() {
  memo_.clear();
  index_.clear();
  keys_.clear();
  info_.clear();
  rows_.clear();
  ++epoch_;
  ++stats_.resets;
}

int32_t GrammarAutomaton::resolve(const State& s) {
  DSV4_CHECK(!s.dead(), "grammar: a dead state has no id");
  if (s.epoch == epoch_) return s.id;
  return intern(*s.key);
}

GrammarAutomaton::State GrammarAutomaton::make_state_locked(int32_t id) const {
  State s;
  if (id < 0) return s;
  s.id = id;
  s.epoch = epoch_;
  s.key = keys_[size_t(id)];
  return s;
}

const GrammarAutomaton::ClosureResult& GrammarAutomaton::closure_of(const std::vector<uint32_t>& config) {
  std::string k(reinterpret_cast<const char*>(config.data()), config.size() * sizeof(uint32_t));
  auto it = memo_.find(k);
  if (it != memo_.end()) return it->second;
  if (memo_.size() >= (1u << 16)) memo_.clear();
  Closure cl{*g_, {}, {}, false};
  cl.visit(config);
  ClosureResult r;
  r.accepting = cl.accepting;
  for (const Config& c : cl.kept) {
    r.configs.push_back(uint32_t(c.size()));
    r.configs.insert(r.configs.end(), c.begin(), c.end());
  }
  return memo_.emplace(std::move(k), std::move(r)).first->second;
}

int32_t GrammarAutomaton::compute(int32_t id, uint8_t b) {
  ++stats_.transitions;
  const std::vector<uint32_t>& k = *keys_[size_t(id)];
  Closure cl{*g_, {}, {}, false};  // used for its kept set and key(); filled from memoized closures
  Config d;
  for (size_t i = 1; i < k.size();) {
    const uint32_t len = k[i];
    const uint32_t* c = &k[i + 1];
    for (const ByteEdge& e : g_->nodes[c[len - 1]].bytes)
      if (e.lo <= b && b <= e.hi) {
        d.assign(c, c + len);
        d.back() = e.to;
        const ClosureResult& r = closure_of(d);
        cl.accepting = cl.accepting || r.accepting;
        for (size_t j = 0; j < r.configs.size();) {
          const uint32_t n = r.configs[j];
          cl.kept.emplace(r.configs.begin() + long(j) + 1, r.configs.begin() + long(j) + 1 + n);
          j += 1 + n;
        }
      }
    i += 1 + len;
  }
  if (cl.kept.empty() && !cl.accepting) return kDead;
  return intern(cl.key());
}

GrammarAutomaton::State GrammarAutomaton::start() {
  std::lock_guard<std::mutex> lk(mu_);
  if (full_locked()) reset();
  Closure cl{*g_, {}, {}, false};
  cl.visit(Config{g_->rules[0].in});
  DSV4_CHECK(!cl.kept.empty() || cl.accepting, "grammar: the grammar accepts nothing");
  return make_state_locked(intern(cl.key()));
}

GrammarAutomaton::State GrammarAutomaton::step(const State& s, uint8_t b) {
  return step(s, std::string_view(reinterpret_cast<const char*>(&b), 1));
}

GrammarAutomaton::State GrammarAutomaton::step(const State& s, std::string_view bytes) {
  std::lock_guard<std::mutex> lk(mu_);
  if (s.dead()) return s;
  if (full_locked()) reset();
  int32_t id = resolve(s);
  for (unsigned char c : bytes) {
    id = trans_locked(id, c);
    if (id < 0) return State{};
  }
  return make_state_locked(id);
}

bool GrammarAutomaton::accepting(const State& s) {
  if (s.dead()) return false;
  std::lock_guard<std::mutex> lk(mu_);
  return accepting_locked(resolve(s));
}

bool GrammarAutomaton::can_continue(const State& s) {
  if (s.dead()) return false;
  std::lock_guard<std::mutex> lk(mu_);
  return can_continue_locked(resolve(s));
}

AutomatonStats GrammarAutomaton::stats() {
  std::lock_guard<std::mutex> lk(mu_);
  AutomatonStats s = stats_;
  s.states = keys_.size();
  return s;
}

}  // namespace dsv4::grammar
