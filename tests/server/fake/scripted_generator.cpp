#include "fake/scripted_generator.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

struct ScriptedGenerator::State {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // the reply, EOS last unless ignore_eos
  SamplingParams params;
  int64_t prompt_len = 0;
  std::atomic<bool> aborted{false};
};

class ScriptedStream final : public OutputStream {
 public:
  ScriptedStream(ScriptedGenerator& b, std::shared_ptr<ScriptedGenerator::State> s)
      : b_(b), s_(std::move(s)), due_(std::chrono::steady_clock::now() + b.delay_), rng_(b.burst_seed_ + s_->id) {}
  ~ScriptedStream() override { b_.abort(s_->id); }
  uint64_t id() const override { return s_->id; }

  std::optional<RequestOutput> next(std::chrono::milliseconds timeout) override {
    if (done_) return std::nullopt;
    RequestOutput o;
    o.id = s_->id;
    o.prompt_tokens = s_->prompt_len;
    if (!s_->aborted) {
      auto now = std::chrono::steady_clock::now();
      if (due_ - now > timeout) {
        std::this_thread::sleep_for(timeout);
        return std::nullopt;
      }
      std::this_thread::sleep_until(due_);
      due_ += b_.delay_;
    }
    if (s_->aborted) {
      o.finish = FinishReason::Abort;
    } else {
      const int n = b_.burst_ > 1 ? 1 + int(rng_() % uint64_t(b_.burst_)) : 1;
      for (int i = 0; i < n && !o.finished(); ++i) emit_one(o);
    }
    o.generated_tokens = generated_;
    if (o.finished()) {
      done_ = true;
      b_.abort(s_->id);  // forget it (no-op for the counters: it is finished)
    }
    return o;
  }

 private:
  void emit_one(RequestOutput& o) {
    const auto& p = s_->params;
    const int32_t tok = s_->tokens[size_t(generated_) % s_->tokens.size()];
    ++generated_;
    ++b_.generated_total_;
    o.new_tokens.push_back(tok);
    if (p.logprobs >= 0) {
      TokenLogprobs lp;
      lp.token = tok;
      lp.logprob = -0.25f;
      lp.rank = 1;
      for (int k = 0; k < p.logprobs; ++k)
        lp.top.push_back({k == 0 ? tok : int32_t((tok + k) % b_.vocab_size()), -0.25f - float(k)});
      o.logprobs.push_back(std::move(lp));
    }
    bool stop_token = false;
    for (int32_t t : p.stop_token_ids) stop_token |= t == tok;
    if ((tok == b_.eos_token_id() && !p.ignore_eos) || stop_token) {
      o.finish = FinishReason::Stop;
      if (stop_token) o.stop_reason = std::to_string(tok);
    } else if (generated_ >= p.max_tokens || s_->prompt_len + generated_ >= b_.max_len_) {
      o.finish = FinishReason::Length;
    }
  }

  ScriptedGenerator& b_;
  std::shared_ptr<ScriptedGenerator::State> s_;
  std::chrono::steady_clock::time_point due_;
  int64_t generated_ = 0;
  bool done_ = false;
  std::mt19937_64 rng_;
};

ScriptedGenerator::ScriptedGenerator(const Tokenizer& tok, std::vector<ScriptedReply> replies, int64_t max_model_len,
                                 std::chrono::milliseconds token_delay)
    : tok_(tok), replies_(std::move(replies)), max_len_(max_model_len), delay_(token_delay) {
  if (replies_.empty()) fail("scripted output: no replies");
}

std::unique_ptr<ScriptedGenerator> ScriptedGenerator::from_file(const std::string& path, const Tokenizer& tok,
                                                            int64_t max_model_len) {
  std::ifstream f(path);
  if (!f) fail("cannot open scripted output file '{}'", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", path, e.what());
  }
  std::vector<ScriptedReply> replies;
  try {
    for (const auto& r : j.at("replies")) replies.push_back({r.value("when", ""), r.at("text").get<std::string>()});
  } catch (const nlohmann::json::exception& e) {
    fail("{}: expected {{\"replies\": [{{\"when\": ..., \"text\": ...}}]}} ({})", path, e.what());
  }
  return std::make_unique<ScriptedGenerator>(tok, std::move(replies), max_model_len,
                                           std::chrono::milliseconds(j.value("token_delay_ms", 2)));
}

int64_t ScriptedGenerator::vocab_size() const { return tok_.vocab_size(); }

std::unique_ptr<OutputStream> ScriptedGenerator::submit(std::vector<int32_t> prompt, SamplingParams params) {
  const int64_t V = vocab_size();
  if (prompt.empty()) fail("the prompt is empty");
  for (int32_t t : prompt)
    if (t < 0 || t >= V) fail("token id {} is out of range [0, {})", t, V);
  params.validate(V);
  if (int64_t(prompt.size()) + params.max_tokens > max_len_)
    fail("prompt ({} tokens) + max_tokens ({}) exceeds the maximum context length {}", prompt.size(), params.max_tokens,
         max_len_);
  const std::string text = tok_.decode(prompt);
  auto s = std::make_shared<State>();
  for (const auto& r : replies_)
    if (r.when.empty() || text.find(r.when) != std::string::npos) {
      s->tokens = tok_.encode(r.text);
      break;
    }
  if (!params.ignore_eos || s->tokens.empty()) s->tokens.push_back(eos_token_id());
  s->prompt_len = int64_t(prompt.size());
  s->params = std::move(params);
  {
    std::lock_guard lk(mu_);
    s->id = next_id_++;
    prompt_total_ += prompt.size();
    live_[s->id] = s;
  }
  return std::make_unique<ScriptedStream>(*this, s);
}

void ScriptedGenerator::abort(uint64_t id) {
  std::lock_guard lk(mu_);
  auto it = live_.find(id);
  if (it == live_.end()) return;
  it->second->aborted = true;
  live_.erase(it);
}

EngineStats ScriptedGenerator::stats() const {
  std::lock_guard lk(mu_);
  EngineStats s;
  s.running = int(live_.size());
  s.kv_blocks_used = int64_t(live_.size());  // one pretend block per live request
  s.kv_blocks_total = 1024;
  s.bytes_per_block = 1;
  s.kv_bytes_used = uint64_t(s.kv_blocks_used);
  s.kv_bytes_total = 1024;
  s.prompt_tokens = prompt_total_;
  s.generation_tokens = generated_total_.load();
  return s;
}

}  // namespace dsv4::server
