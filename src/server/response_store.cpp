#include "server/response_store.h"

#include <algorithm>

namespace dsv4::server {

void ResponseStore::set_capacity(size_t n) {
  std::lock_guard lk(mu_);
  capacity_ = std::max<size_t>(n, 1);
  evict_locked();
}

void ResponseStore::evict_locked() {
  while (items_.size() > capacity_ && !order_.empty()) {
    items_.erase(order_.front());
    order_.pop_front();
  }
}

void ResponseStore::put(const std::string& id, StoredResponse r) {
  std::lock_guard lk(mu_);
  if (items_.insert_or_assign(id, std::move(r)).second) order_.push_back(id);
  evict_locked();
}

std::optional<StoredResponse> ResponseStore::get(const std::string& id) const {
  std::lock_guard lk(mu_);
  auto it = items_.find(id);
  if (it == items_.end()) return std::nullopt;
  return it->second;
}

void ResponseStore::update(const std::string& id, const Json& response, const Json& conversation) {
  std::lock_guard lk(mu_);
  auto it = items_.find(id);
  if (it == items_.end()) return;
  it->second.response = response;
  it->second.conversation = conversation;
}

bool ResponseStore::erase(const std::string& id) {
  std::lock_guard lk(mu_);
  if (!items_.erase(id)) return false;
  order_.erase(std::find(order_.begin(), order_.end(), id));
  return true;
}

size_t ResponseStore::size() const {
  std::lock_guard lk(mu_);
  return items_.size();
}

}  // namespace dsv4::server
