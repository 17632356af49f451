#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <unordered_map>

#include "core/error.h"

namespace dsv4 {

namespace {

struct ByteAlphabet {
  uint32_t to_cp[256];
  int16_t from_cp[324];  // every code point of the alphabet is below 324
  ByteAlphabet() {
    std::fill(std::begin(from_cp), std::end(from_cp), int16_t(-1));
    uint32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? uint32_t(b) : extra++;
      from_cp[to_cp[b]] = int16_t(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18));
    s += char(0x80 | ((cp >> 12) & 0x3F));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
}

uint64_t hash_bytes(const uint8_t* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0x94D049BB133111EBull;
    h ^= h >> 29;
  }
  h = (h ^ (h >> 32)) * 0xD6E8FEB86659FD93ull;
  return (h ^ (h >> 32)) | 1;  // 0 marks an empty slot
}

// Per-thread cache of word -> ids, so the tokenizer stays immutable and shareable across server threads.
// Open addressing over arenas: a lookup or insert allocates nothing once the arenas have grown.
struct WordCache {
  static constexpr size_t kSlots = 1 << 16;
  static constexpr size_t kMaxWords = kSlots / 2;
  static constexpr size_t kMaxWordLen = 64;
  struct Slot {
    uint64_t hash;
    uint32_t key_off, ids_off;
    uint16_t key_len, ids_len;
  };
  uint64_t owner = 0;
  std::vector<Slot> slots;
  std::string keys;
  std::vector<int32_t> ids;
  size_t words = 0;

  void reset(uint64_t new_owner) {
    owner = new_owner;
    slots.assign(kSlots, Slot{0, 0, 0, 0, 0});
    keys.clear();
    ids.clear();
    words = 0;
  }
  const Slot* find(uint64_t h, const uint8_t* p, size_t n) const {
    for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& s = slots[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.key_len == n && std::memcmp(keys.data() + s.key_off, p, n) == 0) return &s;
    }
  }
  void insert(uint64_t h, const uint8_t* p, size_t n, const int32_t* v, size_t m) {
    if (words >= kMaxWords) reset(owner);
    size_t i = h & (kSlots - 1);
    while (slots[i].hash != 0) i = (i + 1) & (kSlots - 1);
    slots[i] = Slot{h, uint32_t(keys.size()), uint32_t(ids.size()), uint16_t(n), uint16_t(m)};
    keys.append(reinterpret_cast<const char*>(p), n);
    ids.insert(ids.end(), v, v + m);
    ++words;
  }
};

WordCache& word_cache(uint64_t owner) {
  thread_local WordCache c;
  if (c.owner != owner) c.reset(owner);
  return c;
}

std::atomic<uint64_t> g_generation{1};

}  // namespace

uint32_t byte_to_unicode(uint8_t b) { return alphabet().to_cp[b]; }

std::string byte_level_encode(std::string_view bytes) {
  std::string s;
  s.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(s, alphabet().to_cp[b]);
  return s;
}

bool byte_level_decode(std::string_view s, std::string& out) {
  const ByteAlphabet& a = alphabet();
  std::string r;
  r.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      cp = ((c & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F);
      i += 2;
    } else {
      return false;  // every alphabet character is at most two UTF-8 bytes
    }
    if (cp >= 324 || a.from_cp[cp] < 0) return false;
    r += char(a.from_cp[cp]);
  }
  out += r;
  return true;
}

BpeModel::BpeModel(const std::vector<std::pair<std::string, int32_t>>& vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges)
    : generation_(g_generation.fetch_add(1)) {
  std::unordered_map<std::string, int32_t> by_token;
  by_token.reserve(vocab.size() * 2);
  for (const auto& [tok, id] : vocab) by_token.emplace(tok, id);
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, alphabet().to_cp[b]);
    auto it = by_token.find(s);
    if (it == by_token.end()) fail("tokenizer: byte-level vocabulary lacks the token for byte {}", b);
    byte_ids_[b] = it->second;
  }
  size_t cap = 1024;
  while (cap < merges.size() * 2) cap <<= 1;
  merges_.assign(cap, MergeSlot{~0ull, 0, 0});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    auto ia = by_token.find(a), ib = by_token.find(b), iab = by_token.find(a + b);
    if (ia == by_token.end() || ib == by_token.end() || iab == by_token.end())
      fail("tokenizer: merge {} ('{} {}') refers to a token missing from the vocabulary", r, a, b);
    const uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
    size_t i = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    while (merges_[i].key != ~0ull && merges_[i].key != key) i = (i + 1) & mask_;
    if (merges_[i].key != key) ++num_merges_;
    merges_[i] = MergeSlot{key, int32_t(r), iab->second};  // a repeated merge takes its last rank, as in HF
  }
}

// Small words: a linear scan for the lowest-rank pair beats a heap. rank[i] / nid[i] describe the pair
// (sym[i], sym[i+1]).
void BpeModel::merge_small(int32_t* sym, int32_t* rank, int32_t* nid, size_t n, std::vector<int32_t>& out) const {
  for (size_t i = 0; i + 1 < n; ++i)
    if (!lookup(sym[i], sym[i + 1], rank[i], nid[i])) rank[i] = INT_MAX;
  while (n > 1) {
    int32_t best = INT_MAX;
    size_t bi = 0;
    for (size_t i = 0; i + 1 < n; ++i)
      if (rank[i] < best) {
        best = rank[i];
        bi = i;
      }
    if (best == INT_MAX) break;
    sym[bi] = nid[bi];
    for (size_t i = bi + 1; i + 1 < n; ++i) {
      sym[i] = sym[i + 1];
      rank[i] = rank[i + 1];
      nid[i] = nid[i + 1];
    }
    --n;
    if (bi > 0 && !lookup(sym[bi - 1], sym[bi], rank[bi - 1], nid[bi - 1])) rank[bi - 1] = INT_MAX;
    if (bi + 1 < n && !lookup(sym[bi], sym[bi + 1], rank[bi], nid[bi])) rank[bi] = INT_MAX;
  }
  out.insert(out.end(), sym, sym + n);
}

// Long words (whitespace runs, minified code): HF's own procedure, a heap of (rank, position) over a linked
// list of symbols, with stale entries skipped when popped.
void BpeModel::merge_large(const uint8_t* p, size_t n, std::vector<int32_t>& out) const {
  struct Item {
    int32_t rank;
    uint32_t pos;
    bool operator>(const Item& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<int32_t> sym, prev, next;
  thread_local std::vector<Item> heap;
  sym.resize(n);
  prev.resize(n);
  next.resize(n);
  heap.clear();
  const auto push = [&](Item it) {
    heap.push_back(it);
    std::push_heap(heap.begin(), heap.end(), std::greater<Item>());
  };
  for (size_t i = 0; i < n; ++i) {
    sym[i] = byte_ids_[p[i]];
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  int32_t r, id;
  for (size_t i = 0; i + 1 < n; ++i)
    if (lookup(sym[i], sym[i + 1], r, id)) push({r, uint32_t(i)});
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Item>());
    const Item top = heap.back();
    heap.pop_back();
    const int32_t i = int32_t(top.pos);
    if (sym[i] < 0 || next[i] < 0) continue;  // merged away, or now last
    const int32_t j = next[i];
    if (!lookup(sym[i], sym[j], r, id) || r != top.rank) continue;  // stale: the pair changed
    sym[i] = id;
    sym[j] = -1;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    if (prev[i] >= 0 && lookup(sym[prev[i]], sym[i], r, id)) push({r, uint32_t(prev[i])});
    if (next[i] >= 0 && lookup(sym[i], sym[next[i]], r, id)) push({r, uint32_t(i)});
  }
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
}

void BpeModel::encode_word_uncached(const uint8_t* p, size_t n, std::vector<int32_t>& out) const {
  constexpr size_t kSmall = 64;
  if (n == 0) return;
  if (n == 1) {
    out.push_back(byte_ids_[p[0]]);
    return;
  }
  if (n > kSmall) {
    merge_large(p, n, out);
    return;
  }
  int32_t sym[kSmall], rank[kSmall], nid[kSmall];
  for (size_t i = 0; i < n; ++i) sym[i] = byte_ids_[p[i]];
  merge_small(sym, rank, nid, n, out);
}

void BpeModel::encode_word(const uint8_t* p, size_t n, std::vector<int32_t>& out) const {
  if (n < 2 || n > WordCache::kMaxWordLen) {
    encode_word_uncached(p, n, out);
    return;
  }
  WordCache& cache = word_cache(generation_);
  const uint64_t h = hash_bytes(p, n);
  if (const WordCache::Slot* s = cache.find(h, p, n)) {
    const int32_t* v = cache.ids.data() + s->ids_off;
    out.insert(out.end(), v, v + s->ids_len);
    return;
  }
  const size_t start = out.size();
  encode_word_uncached(p, n, out);
  cache.insert(h, p, n, out.data() + start, out.size() - start);
}

}  // namespace dsv4
