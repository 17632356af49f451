// Responses API state kept by the server: `store: true` responses, for GET /v1/responses/{id}, cancel, delete
// and `previous_response_id`. Bounded (oldest evicted first): an evicted or unknown id is a clear 404, never a
// silently shorter conversation. In memory only: a restart forgets everything.
#pragma once
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "server/api_error.h"

namespace dsv4::server {

struct StoredResponse {
  Json response;      // the Response object as a client sees it (status changes while it runs)
  Json conversation;  // chat-shaped messages that continue it: its input (without instructions) + its output
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
};

class ResponseStore {
 public:
  explicit ResponseStore(size_t capacity = 1024) : capacity_(capacity) {}
  void set_capacity(size_t n);
  void put(const std::string& id, StoredResponse r);  // insert or replace; evicts the oldest beyond capacity
  std::optional<StoredResponse> get(const std::string& id) const;
  // Updates what a finished response looks like (no-op when it was evicted or deleted meanwhile).
  void update(const std::string& id, const Json& response, const Json& conversation);
  bool erase(const std::string& id);
  size_t size() const;

 private:
  mutable std::mutex mu_;
  size_t capacity_;
  std::map<std::string, StoredResponse> items_;
  std::deque<std::string> order_;  // insertion order, for eviction
  void evict_locked();
};

}  // namespace dsv4::server
