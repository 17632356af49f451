// A small key-value store over TCP for rendezvous: rank 0 serves it on --master-port, every rank (rank 0
// included) is a client. It implements Gloo's rendezvous Store, so Gloo exchanges its pair addresses through
// it, and dsv4's own join checks (versions, configs, checkpoints) use it before any collective exists.
// Not a collective: it only carries a few hundred bytes per rank, once, at start.
#pragma once
#include <gloo/rendezvous/store.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace dsv4::dist {

// The server side (rank 0). Binds 0.0.0.0:port; fails with a message naming the port when it is taken.
class TcpStoreServer {
 public:
  explicit TcpStoreServer(int port);
  ~TcpStoreServer();
  int port() const { return port_; }

 private:
  void accept_loop();
  void serve(int fd);
  int port_ = 0, listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::map<std::string, std::vector<char>> kv_;
  std::vector<int> clients_;
  std::vector<std::thread> threads_;
  std::thread accept_;
};

// A client. Connecting retries until `timeout` (the master may start after the workers).
class TcpStore : public gloo::rendezvous::Store {
 public:
  TcpStore(const std::string& host, int port, std::chrono::milliseconds timeout);
  ~TcpStore() override;

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;  // waits up to the store's timeout
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;
  // nullopt when the key is not (yet) set.
  std::optional<std::vector<char>> try_get(const std::string& key);
  // The keys of `keys` still missing after waiting up to `timeout` (empty: all are set).
  std::vector<std::string> wait_for(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);

 private:
  std::string host_;
  int port_ = 0, fd_ = -1;
  std::chrono::milliseconds timeout_;
  std::mutex mu_;
};

}  // namespace dsv4::dist
