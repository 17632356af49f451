// Byte-level BPE model: the GPT-2 byte <-> unicode alphabet, the vocabulary, and the merge procedure of HF
// `tokenizers` (lowest-rank adjacent pair first, leftmost on ties; no dropout, no unk, ignore_merges off).
// Words are raw bytes here; the unicode alphabet only matters when reading tokenizer.json.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsv4 {

// GPT-2's reversible byte -> code point map (printable Latin-1 bytes map to themselves, the rest to 256+).
uint32_t byte_to_unicode(uint8_t b);
// Inverse on a UTF-8 string: the bytes it spells, or false if some character is outside the alphabet.
bool byte_level_decode(std::string_view s, std::string& out);
// Forward on raw bytes: the alphabet spelling (UTF-8), as tokenizer.json stores vocabulary entries.
std::string byte_level_encode(std::string_view bytes);

class BpeModel {
 public:
  // `vocab`: (token in alphabet spelling, id); `merges`: pairs in rank order (alphabet spelling).
  BpeModel(const std::vector<std::pair<std::string, int32_t>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges);

  // Appends the ids of one pre-token (raw bytes). Results of short words are cached per thread.
  void encode_word(const uint8_t* p, size_t n, std::vector<int32_t>& out) const;
  // Same without touching the cache (for tests that compare the two paths).
  void encode_word_uncached(const uint8_t* p, size_t n, std::vector<int32_t>& out) const;

  int32_t byte_token(uint8_t b) const { return byte_ids_[b]; }
  size_t num_merges() const { return num_merges_; }

 private:
  struct MergeSlot {
    uint64_t key;  // (left << 32) | right; ~0 when empty
    int32_t rank;
    int32_t id;
  };
  bool lookup(int32_t a, int32_t b, int32_t& rank, int32_t& id) const {
    const uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    size_t i = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    for (;;) {
      const MergeSlot& s = merges_[i];
      if (s.key == key) {
        rank = s.rank;
        id = s.id;
        return true;
      }
      if (s.key == ~0ull) return false;
      i = (i + 1) & mask_;
    }
  }
  void merge_small(int32_t* sym, int32_t* rank, int32_t* nid, size_t n, std::vector<int32_t>& out) const;
  void merge_large(const uint8_t* p, size_t n, std::vector<int32_t>& out) const;

  int32_t byte_ids_[256];
  std::vector<MergeSlot> merges_;
  size_t mask_ = 0;
  int shift_ = 0;
  size_t num_merges_ = 0;
  uint64_t generation_;  // identifies this model to the per-thread word cache
};

}  // namespace dsv4
