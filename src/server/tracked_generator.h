// A Generator that remembers which requests are running, so that shutdown can end them all at once: each then
// finishes with FinishReason::Abort through its own output stream, and its handler writes the final event
// (unlike a handler-side abort, which stops without one). Everything else is forwarded.
#pragma once
#include <mutex>
#include <unordered_set>

#include "server/generator.h"

namespace dsv4::server {

class TrackedGenerator final : public Generator {
 public:
  explicit TrackedGenerator(Generator& inner) : inner_(inner) {}
  std::unique_ptr<OutputStream> submit(std::vector<int32_t> prompt, SamplingParams params) override;
  void abort(uint64_t id) override { inner_.abort(id); }
  EngineStats stats() const override { return inner_.stats(); }
  int64_t max_model_len() const override { return inner_.max_model_len(); }
  int64_t vocab_size() const override { return inner_.vocab_size(); }
  int32_t eos_token_id() const override { return inner_.eos_token_id(); }
  std::optional<std::string> fatal_error() const override { return inner_.fatal_error(); }
  void on_fatal(std::function<void(const std::string&)> fn) override { inner_.on_fatal(std::move(fn)); }

  void abort_all();  // every request submitted and not yet released by its reader
  size_t running() const;

 private:
  friend class TrackedStream;
  void release(uint64_t id);
  Generator& inner_;
  mutable std::mutex mu_;
  std::unordered_set<uint64_t> live_;
};

}  // namespace dsv4::server
