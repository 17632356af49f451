#include "runtime/kv_offload.h"

#include <fmt/format.h>

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
                     uint64_t max_bytes)
    : runner_(runner), pool_(pool), prefix_(prefix) {
  const KvLayout& L = runner.kv_layout();
  if (!L.with_tail()) fail("--kv-offload-dir needs prefix caching (blocks carry the state that resumes at their end)");
  if (runner.distributed()) fail("--kv-offload-dir is not supported with tensor parallelism yet (each rank's KV shard would need its own files)");
  if (max_bytes == 0) fail("--kv-offload-size must be > 0 with --kv-offload-dir");
  KvDiskOptions o;
  o.dir = dir;
  o.max_bytes = max_bytes;
  o.identity = kv_disk_identity(runner);
  o.block_tokens = L.block_tokens();
  o.block_bytes = L.block_bytes();
  store_ = std::make_unique<KvDiskStore>(std::move(o));
}

void KvOffload::save(std::span<const int32_t> tokens, int64_t index, uint64_t parent, uint64_t hash, int32_t block) {
  if (!store_->writable() || store_->contains(hash)) return;
  const KvLayout& L = runner_.kv_layout();
  std::vector<uint8_t> bytes(size_t(L.block_bytes()));
  runner_.backend().download(bytes.data(), runner_.kv_storage().arena(), bytes.size(),
                             runner_.kv_storage().layout().shape.block_offset(block));
  const int64_t bt = L.block_tokens();
  store_->put(hash, parent, tokens.subspan(size_t(index * bt), size_t(bt)), std::move(bytes));
}

std::shared_ptr<KvDiskRead> KvOffload::probe(std::span<const int32_t> tokens, int64_t have, int64_t max_blocks) {
  const int64_t bt = prefix_.block_tokens();
  std::vector<KvDiskKey> keys;
  uint64_t h = prefix_.hash_upto(tokens, have);
  for (int64_t k = have; k < max_blocks; ++k) {
    auto blk = tokens.subspan(size_t(k * bt), size_t(bt));
    const uint64_t parent = h;
    h = PrefixCache::chain_hash(parent, blk);
    if (!store_->contains(h)) break;
    keys.push_back({h, parent, std::vector<int32_t>(blk.begin(), blk.end())});
  }
  if (keys.empty()) return nullptr;
  return store_->read_async(std::move(keys));
}

std::vector<int32_t> KvOffload::install(const KvDiskRead& r, std::span<const int32_t> tokens, int64_t first) {
  std::vector<int32_t> ids;
  KvStorage& kv = runner_.kv_storage();
  for (size_t i = 0; i < r.blocks.size(); ++i) {
    const int64_t index = first + int64_t(i);
    // Cached meanwhile (another request computed or restored it): pin that one.
    auto cached = prefix_.lookup(tokens, index + 1);
    if (int64_t(cached.size()) == index + 1) {
      pool_.retain(cached.back());
      ids.push_back(cached.back());
      continue;
    }
    if (int64_t(cached.size()) < index) break;  // an earlier block went: the chain is broken here
    int32_t b = pool_.allocate();
    if (b < 0 && prefix_.evict(1) > 0) b = pool_.allocate();
    if (b < 0) break;  // the rest is recomputed
    runner_.backend().upload(kv.arena(), r.blocks[i].data(), r.blocks[i].size(), kv.layout().shape.block_offset(b));
    prefix_.insert(tokens, index, b);
    ids.push_back(b);  // the allocation's reference is the pin; the cache holds its own
    restored_tokens_ += uint64_t(prefix_.block_tokens());
  }
  return ids;
}

}  // namespace dsv4
