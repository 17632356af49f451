#include "server/tracked_generator.h"

#include <vector>

namespace dsv4::server {

class TrackedStream final : public OutputStream {
 public:
  TrackedStream(TrackedGenerator& b, std::unique_ptr<OutputStream> s) : b_(b), s_(std::move(s)) {}
  ~TrackedStream() override { b_.release(s_->id()); }
  uint64_t id() const override { return s_->id(); }
  std::optional<RequestOutput> next(std::chrono::milliseconds timeout) override {
    auto o = s_->next(timeout);
    if (o && o->finished()) b_.release(s_->id());
    return o;
  }

 private:
  TrackedGenerator& b_;
  std::unique_ptr<OutputStream> s_;
};

std::unique_ptr<OutputStream> TrackedGenerator::submit(std::vector<int32_t> prompt, SamplingParams params) {
  auto s = inner_.submit(std::move(prompt), std::move(params));
  {
    std::lock_guard lk(mu_);
    live_.insert(s->id());
  }
  return std::make_unique<TrackedStream>(*this, std::move(s));
}

void TrackedGenerator::release(uint64_t id) {
  std::lock_guard lk(mu_);
  live_.erase(id);
}

void TrackedGenerator::abort_all() {
  std::vector<uint64_t> ids;
  {
    std::lock_guard lk(mu_);
    ids.assign(live_.begin(), live_.end());
  }
  for (uint64_t id : ids) inner_.abort(id);
}

size_t TrackedGenerator::running() const {
  std::lock_guard lk(mu_);
  return live_.size();
}

}  // namespace dsv4::server
