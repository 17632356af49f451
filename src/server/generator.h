// What the HTTP layer needs from whatever makes tokens: submit token ids, read each request's outputs, abort,
// stats. (Not the compute backend of src/kernels: this is the server's view of the serving engine.)
// EngineGenerator is the product's (an EngineLoop); tests/server/fake/scripted_generator.h replays fixed
// texts for tests of output shapes a random demo model never produces (tool calls, reasoning).
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "runtime/engine.h"

namespace dsv4 {
class EngineLoop;
class RequestStream;
}  // namespace dsv4

namespace dsv4::server {

class OutputStream {
 public:
  virtual ~OutputStream() = default;
  virtual uint64_t id() const = 0;
  // Next output, waiting up to `timeout`; nullopt on timeout and after the finished output.
  virtual std::optional<RequestOutput> next(std::chrono::milliseconds timeout) = 0;
};

class Generator {
 public:
  virtual ~Generator() = default;
  // Throws dsv4::Error with a user-facing message for invalid requests.
  virtual std::unique_ptr<OutputStream> submit(std::vector<int32_t> prompt, SamplingParams params) = 0;
  virtual void abort(uint64_t id) = 0;  // frees the request's KV at once; fine for finished ids
  virtual EngineStats stats() const = 0;
  virtual int64_t max_model_len() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t eos_token_id() const = 0;
  // Set when the generator cannot serve any more (a tensor-parallel peer failed); /health then says so.
  virtual std::optional<std::string> fatal_error() const { return std::nullopt; }
  // Called once when fatal_error() becomes set (the server then shuts down and exits non-zero).
  virtual void on_fatal(std::function<void(const std::string&)> fn) { (void)fn; }
};

class EngineGenerator final : public Generator {
 public:
  explicit EngineGenerator(std::unique_ptr<Engine> engine);
  ~EngineGenerator() override;
  std::unique_ptr<OutputStream> submit(std::vector<int32_t> prompt, SamplingParams params) override;
  void abort(uint64_t id) override;
  EngineStats stats() const override;
  int64_t max_model_len() const override { return max_len_; }
  int64_t vocab_size() const override { return vocab_; }
  int32_t eos_token_id() const override { return eos_; }
  std::optional<std::string> fatal_error() const override;
  void on_fatal(std::function<void(const std::string&)> fn) override;

 private:
  std::unique_ptr<EngineLoop> loop_;
  int64_t max_len_ = 0, vocab_ = 0;
  int32_t eos_ = 1;
};

}  // namespace dsv4::server
