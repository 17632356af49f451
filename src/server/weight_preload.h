// Weight loading progress. The engine maps the checkpoint (mmap), so its real load is page faults spread over
// the first requests. Serving reads every shard once up front instead, into the page cache those mappings
// use, with a progress bar (bytes, rate, ETA) on a terminal and periodic log lines otherwise; the first
// request then runs at full speed.
#pragma once
#include <cstdint>
#include <string>

namespace dsv4::server {

class Progress {
 public:
  Progress(std::string what, uint64_t total_bytes);
  void update(uint64_t done_bytes);  // rate-limited output
  void finish();

 private:
  std::string what_;
  uint64_t total_;
  bool tty_;
  double start_, last_print_ = -1e9;
};

// Reads every *.safetensors file in `dir` (sequentially, large blocks); returns the bytes read.
uint64_t preload_weights(const std::string& dir);

}  // namespace dsv4::server
