#include "server/generator.h"

#include "runtime/engine_loop.h"

namespace dsv4::server {

namespace {
class EngineStream final : public OutputStream {
 public:
  explicit EngineStream(std::shared_ptr<RequestStream> s) : s_(std::move(s)) {}
  uint64_t id() const override { return s_->id(); }
  std::optional<RequestOutput> next(std::chrono::milliseconds timeout) override { return s_->next(timeout); }

 private:
  std::shared_ptr<RequestStream> s_;
};
}  // namespace

EngineGenerator::EngineGenerator(std::unique_ptr<Engine> engine) {
  max_len_ = engine->max_model_len();
  vocab_ = engine->model_config().vocab_size;
  eos_ = int32_t(engine->model_config().eos_token_id);
  loop_ = std::make_unique<EngineLoop>(std::move(engine));
}

EngineGenerator::~EngineGenerator() = default;

std::unique_ptr<OutputStream> EngineGenerator::submit(std::vector<int32_t> prompt, SamplingParams params) {
  return std::make_unique<EngineStream>(loop_->submit(std::move(prompt), std::move(params)));
}

void EngineGenerator::abort(uint64_t id) { loop_->abort(id); }

EngineStats EngineGenerator::stats() const { return loop_->stats(); }

std::optional<std::string> EngineGenerator::fatal_error() const { return loop_->fatal_error(); }

void EngineGenerator::on_fatal(std::function<void(const std::string&)> fn) { loop_->on_fatal(std::move(fn)); }

}  // namespace dsv4::server
