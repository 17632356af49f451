#include "runtime/kv_offload.h"

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"
#include "runtime/model_runner.h"
#include "runtime/rank_identity.h"

namespace dsv4 {

std::string kv_disk_identity(ModelRunner& runner) {
  const RunnerOptions& o = runner.options();
  const KvLayout& L = runner.kv_layout();
  std::string id;
  for (const auto& item : rank_identity(o.model_dir, o.load_format)) id += fmt::format("{}={};", item.what, item.value);
  id += fmt::format("numerics={};backend={};world={};", int(o.numerics), runner.backend().name(), o.dist.world_size);
  const KvArenaShape& S = L.shape;
  id += fmt::format("kv={};bt={};tail={};window={};main={},{},{};index={},{};block_bytes={};", kv_dtype_name(L.dtype()),
                    S.block_tokens, S.with_tail, S.window, S.main.dim, S.main.rope, S.main.bytes(), S.index.dim,
                    S.index.bytes(), S.block_bytes);
  for (const KvLayerOffsets& l : L.layers)
    id += fmt::format("[{},{},{},{},{},{}]", l.ratio, l.comp_off, l.idx_off, l.tail_off, l.cstate_off, l.istate_off);
  return id;
}

KvOffload::KvOffload(ModelRunner& runner, BlockPool& pool, PrefixCache& prefix, const std::string& dir,
                     uint64_t max_bytes, int checkpoint_blocks)
    : runner_(runner), pool_(pool), prefix_(prefix), checkpoint_blocks_(checkpoint_blocks) {
  const KvLayout& L = runner.kv_layout();
  if (!L.with_tail()) fail("--kv-offload-dir needs prefix caching (blocks carry the state that resumes at their end)");
  if (runner.distributed()) fail("--kv-offload-dir is not supported with tensor parallelism yet (each rank's KV shard would need its own files)");
  if (max_bytes == 0) fail("--kv-offload-size must be > 0 with --kv-offload-dir");
  if (checkpoint_blocks < 1) fail("KV offload: checkpoint interval {} must be >= 1 block", checkpoint_blocks);
  // The block's regions by what they are (model/kv_cache.cpp lays them out).
  const KvArenaShape& S = L.shape;
  for (const KvLayerOffsets& l : L.layers) {
    if (l.comp_off >= 0) body_.push_back({l.comp_off, int64_t(S.block_tokens / l.ratio) * S.main.bytes()});
    if (l.idx_off >= 0) body_.push_back({l.idx_off, int64_t(S.block_tokens / 4) * S.index.bytes()});
    if (l.tail_off >= 0) tail_.push_back({l.tail_off, int64_t(S.window) * S.main.bytes()});
    if (l.cstate_off >= 0) tail_.push_back({l.cstate_off, 4 * KvArenaShape::ring_token_floats(4, S.main_d) * 4});
    if (l.istate_off >= 0) tail_.push_back({l.istate_off, 4 * KvArenaShape::ring_token_floats(4, S.index_d) * 4});
  }
  auto total = [](const std::vector<Range>& v) {
    int64_t n = 0;
    for (auto& r : v) n += r.bytes;
    return n;
  };
  KvDiskOptions o;
  o.dir = dir;
  o.max_bytes = max_bytes;
  o.identity = kv_disk_identity(runner);
  o.block_tokens = L.block_tokens();
  o.body_bytes = total(body_);
  o.tail_bytes = total(tail_);
  store_ = std::make_unique<KvDiskStore>(std::move(o));
}

std::vector<uint8_t> KvOffload::pack(const std::vector<uint8_t>& block, const std::vector<Range>& ranges) const {
  std::vector<uint8_t> out;
  for (const Range& r : ranges) out.insert(out.end(), block.begin() + r.off, block.begin() + r.off + r.bytes);
  return out;
}

void KvOffload::save(std::span<const int32_t> tokens, int64_t index, uint64_t parent, uint64_t hash, int32_t block,
                     bool tail) {
  if (!store_->writable()) return;
  tail = tail || (index + 1) % checkpoint_blocks_ == 0;
  const bool body = !store_->contains(hash, KvFile::Body);
  tail = tail && !store_->contains(hash, KvFile::Tail);
  if (!body && !tail) return;
  const KvLayout& L = runner_.kv_layout();
  std::vector<uint8_t> bytes(size_t(L.block_bytes()));
  runner_.backend().download(bytes.data(), runner_.kv_storage().arena(), bytes.size(),
                             runner_.kv_storage().layout().shape.block_offset(block));
  const int64_t bt = L.block_tokens();
  auto blk = tokens.subspan(size_t(index * bt), size_t(bt));
  if (body) store_->put(hash, parent, blk, pack(bytes, body_), KvFile::Body);
  if (tail) store_->put(hash, parent, blk, pack(bytes, tail_), KvFile::Tail);
}

void KvOffload::save_tail(std::span<const int32_t> tokens, int64_t index, int32_t block) {
  if (index < 0) return;
  const int64_t bt = prefix_.block_tokens();
  const uint64_t parent = prefix_.hash_upto(tokens, index);
  save(tokens, index, parent, PrefixCache::chain_hash(parent, tokens.subspan(size_t(index * bt), size_t(bt))), block,
       true);
}

std::shared_ptr<KvDiskRead> KvOffload::probe(std::span<const int32_t> tokens, int64_t have, int64_t max_blocks) {
  const int64_t bt = prefix_.block_tokens();
  std::vector<KvDiskKey> keys;
  uint64_t h = prefix_.hash_upto(tokens, have);
  size_t useful = 0;  // keys up to the deepest snapshot on disk
  for (int64_t k = have; k < max_blocks; ++k) {
    auto blk = tokens.subspan(size_t(k * bt), size_t(bt));
    const uint64_t parent = h;
    h = PrefixCache::chain_hash(parent, blk);
    if (!store_->contains(h, KvFile::Body)) break;
    const bool tail = store_->contains(h, KvFile::Tail);
    keys.push_back({h, parent, std::vector<int32_t>(blk.begin(), blk.end()), tail});
    if (tail) useful = keys.size();
  }
  keys.resize(useful);
  if (keys.empty()) return nullptr;
  return store_->read_async(std::move(keys));
}

std::vector<int32_t> KvOffload::install(const KvDiskRead& r, std::span<const int32_t> tokens, int64_t first) {
  std::vector<int32_t> ids;
  KvStorage& kv = runner_.kv_storage();
  std::vector<uint8_t> block(size_t(kv.layout().block_bytes()), 0);
  for (size_t i = 0; i < r.blocks.size(); ++i) {
    const int64_t index = first + int64_t(i);
    const bool last = i + 1 == r.blocks.size();  // the one with the snapshot
    // Cached meanwhile (another request computed or restored it): pin that one, unless the run ends here and
    // it cannot be resumed from.
    std::vector<std::pair<int32_t, bool>> chain;
    prefix_.lookup(tokens, index + 1, &chain);
    if (int64_t(chain.size()) == index + 1 && (!last || chain.back().second)) {
      pool_.retain(chain.back().first);
      ids.push_back(chain.back().first);
      continue;
    }
    if (int64_t(chain.size()) < index) break;  // an earlier block went: the chain is broken here
    int32_t b = pool_.allocate();
    if (b < 0 && prefix_.evict(1) > 0) b = pool_.allocate();
    if (b < 0) break;  // the rest is recomputed (the run now ends without a snapshot: nothing resumes in it)
    int64_t at = 0;
    for (const Range& g : body_) std::memcpy(block.data() + g.off, r.blocks[i].data() + (at += g.bytes) - g.bytes, size_t(g.bytes));
    if (last) {
      at = 0;
      for (const Range& g : tail_) std::memcpy(block.data() + g.off, r.tail.data() + (at += g.bytes) - g.bytes, size_t(g.bytes));
    }
    runner_.backend().upload(kv.arena(), block.data(), block.size(), kv.layout().shape.block_offset(b));
    prefix_.insert(tokens, index, b, last);
    ids.push_back(b);  // the allocation's reference is the pin; the cache holds its own
    restored_tokens_ += uint64_t(prefix_.block_tokens());
  }
  return ids;
}

}  // namespace dsv4
