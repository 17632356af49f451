// The prefix cache's disk tier (--kv-offload-dir): full KV blocks as checksummed files named by the prefix
// cache's chain hash and an identity hash (model, checkpoint, dtype, layout, numerics, backend, build), so
// blocks of another model or layout are never read. Two kinds of file per block: the body (`.kvb`: compressed
// entries and indexer keys, the compact per-token state) and, for some blocks, the resume snapshot (`.kvt`:
// window tail and compressor records at the block's end), which is several times the body's size and only
// needed where a restored prefix ends. Files are immutable once visible: a writer writes a private temporary file
// and renames it into place, so servers sharing a directory never see a partial file; eviction (least recently
// used by mtime, which a read refreshes) only unlinks. Writes and reads run on the store's own threads: the
// step loop only queues and polls. Any I/O failure turns writes off with a warning, never a failed request;
// a file that fails verification is ignored (and removed) with a warning and its block recomputed.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace dsv4 {

struct KvDiskOptions {
  std::string dir;
  uint64_t max_bytes = 0;      // all block files in dir together (other identities' too)
  std::string identity;        // what must match for a block to be reusable (kv_disk_identity)
  int block_tokens = 256;
  int64_t body_bytes = 0;      // payload of a body file
  int64_t tail_bytes = 0;      // payload of a resume snapshot file
  int io_threads = 2;          // readers; one writer besides
  uint64_t max_queued_bytes = 256ull << 20;  // writes beyond it are dropped (the step loop never waits)
};

struct KvDiskStats {
  bool writable = false;
  uint64_t hit_blocks = 0, hit_tokens = 0;        // blocks restored from disk
  uint64_t bytes_read = 0, bytes_written = 0;
  uint64_t files_written = 0, writes_dropped = 0;
  uint64_t bad_files = 0;                         // failed verification (corrupt, truncated, mismatched)
  uint64_t evicted_files = 0;
  uint64_t restores = 0;
  double restore_seconds = 0;                     // summed over restores (read + verify)
  uint64_t files = 0, bytes_on_disk = 0;          // this process's view (rescanned when over the size)
};

// One block to read: its chain hash, its parent's, its tokens (checked against the file's), and whether its
// resume snapshot is wanted.
struct KvDiskKey {
  uint64_t hash = 0, parent = 0;
  std::vector<int32_t> tokens;
  bool tail = false;
};

// A read in progress. done() turns true once; then `blocks` holds the bodies of keys[0..tail_index] and `tail`
// the snapshot of keys[tail_index]: the longest verified run of bodies that ends at a verified snapshot
// (tail_index -1 and no blocks when there is none).
struct KvDiskRead {
  std::atomic<bool> finished{false};
  std::vector<KvDiskKey> keys;
  std::vector<std::vector<uint8_t>> blocks;
  std::vector<uint8_t> tail;
  int64_t tail_index = -1;
  double seconds = 0;
  bool done() const { return finished.load(std::memory_order_acquire); }
};

enum class KvFile : uint32_t { Body = 1, Tail = 2 };

class KvDiskStore {
 public:
  // Never throws for I/O: an unusable directory leaves the store read-only or empty, with a warning.
  explicit KvDiskStore(KvDiskOptions o);
  ~KvDiskStore();  // finishes queued writes
  KvDiskStore(const KvDiskStore&) = delete;
  KvDiskStore& operator=(const KvDiskStore&) = delete;

  const KvDiskOptions& options() const { return o_; }
  std::string identity_hash() const;  // 16 hex digits, the file name prefix
  bool writable() const { return writable_.load(); }
  // A visible file for this chain hash (any writer's).
  bool contains(uint64_t hash, KvFile kind = KvFile::Body) const;
  // Queues one file for writing; returns at once. Dropped when writes are off, the file exists or the queue
  // is full.
  void put(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens, std::vector<uint8_t> bytes,
           KvFile kind = KvFile::Body);
  // Starts reading `keys` in order on a reader thread; stops at the first missing or bad file.
  std::shared_ptr<KvDiskRead> read_async(std::vector<KvDiskKey> keys);
  void flush();  // waits until every queued write is on disk (tests, shutdown)
  KvDiskStats stats() const;
  std::string file_path(uint64_t hash, KvFile kind = KvFile::Body) const;

  // The one-line summary servers print at start.
  std::string describe() const;

 private:
  struct Write {
    KvFile kind;
    uint64_t hash, parent;
    std::vector<int32_t> tokens;
    std::vector<uint8_t> bytes;
  };
  void writer_loop();
  void reader_loop();
  void write_one(const Write& w);
  bool read_one(const KvDiskKey& k, KvFile kind, std::vector<uint8_t>& out);
  int64_t payload_bytes(KvFile kind) const { return kind == KvFile::Body ? o_.body_bytes : o_.tail_bytes; }
  void disable_writes(const std::string& why);
  void enforce_size();
  void sweep_stale_temporaries();

  KvDiskOptions o_;
  uint64_t id_hash_ = 0;
  std::atomic<bool> writable_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<Write> writes_;
  std::deque<std::shared_ptr<KvDiskRead>> reads_;
  uint64_t queued_bytes_ = 0;
  bool writing_ = false, stop_ = false;
  KvDiskStats st_;
  uint64_t tmp_counter_ = 0, tmp_tag_ = 0;
  std::thread writer_;
  std::vector<std::thread> readers_;
};

}  // namespace dsv4
