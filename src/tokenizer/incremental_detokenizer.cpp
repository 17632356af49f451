#include "tokenizer/incremental_detokenizer.h"

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsv4 {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed sequence a lead byte starts (0: not a lead byte), and the allowed range of the
// second byte (Unicode Table 3-7); later continuation bytes are always 80..BF.
int sequence_length(unsigned char b, unsigned char& lo, unsigned char& hi) {
  lo = 0x80;
  hi = 0xBF;
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b == 0xE0) {
    lo = 0xA0;
    return 3;
  }
  if (b >= 0xE1 && b <= 0xEC) return 3;
  if (b == 0xED) {
    hi = 0x9F;
    return 3;
  }
  if (b >= 0xEE && b <= 0xEF) return 3;
  if (b == 0xF0) {
    lo = 0x90;
    return 4;
  }
  if (b >= 0xF1 && b <= 0xF3) return 4;
  if (b == 0xF4) {
    hi = 0x8F;
    return 4;
  }
  return 0;
}

}  // namespace

size_t append_utf8_lossy(std::string_view in, std::string& out, bool final) {
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
  size_t i = 0, run = 0;  // [run, i) is valid text not yet copied
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    unsigned char lo, hi;
    const int len = sequence_length(p[i], lo, hi);
    size_t k = 1;  // bytes of the sequence that are well-formed so far
    if (len > 0) {
      while (k < size_t(len) && i + k < n) {
        const unsigned char c = p[i + k];
        if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) break;
        ++k;
      }
      if (k == size_t(len)) {
        i += k;
        continue;
      }
      if (i + k == n && !final) break;  // may still complete: keep it for later
    }
    out.append(in.data() + run, i - run);
    out += kReplacement;  // one per maximal ill-formed subpart
    i += k;
    run = i;
  }
  out.append(in.data() + run, i - run);
  return i;
}

size_t IncrementalDetokenizer::push(int32_t id, std::string& out) {
  if (!tok_->is_token(id)) fail("token id {} is not in the vocabulary (size {})", id, tok_->vocab_size());
  if (skip_special_ && tok_->is_special(id)) return 0;
  const std::string_view bytes = tok_->token_bytes(id);
  const size_t before = out.size();
  if (pending_.empty()) {
    const size_t used = append_utf8_lossy(bytes, out, false);
    pending_.assign(bytes.substr(used));
  } else {
    pending_.append(bytes);
    const size_t used = append_utf8_lossy(pending_, out, false);
    pending_.erase(0, used);
  }
  return out.size() - before;
}

size_t IncrementalDetokenizer::finish(std::string& out) {
  const size_t before = out.size();
  append_utf8_lossy(pending_, out, true);
  pending_.clear();
  return out.size() - before;
}

}  // namespace dsv4
