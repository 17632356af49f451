#include "dist/tcp_store.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace dsv4::dist {

// Wire format: request = op (1 byte: 'S' set, 'G' get) + u32 key length + key [+ u32 value length + value for
// 'S']; reply = 1 byte (set: 1; get: 1 found, 0 not) [+ u32 length + value when found].
namespace {

bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= size_t(k);
  }
  return true;
}

bool read_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    const ssize_t k = ::recv(fd, c, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= size_t(k);
  }
  return true;
}

bool write_blob(int fd, const char* p, uint32_t n) { return write_all(fd, &n, 4) && write_all(fd, p, n); }

bool read_blob(int fd, std::vector<char>& out) {
  uint32_t n = 0;
  if (!read_all(fd, &n, 4) || n > (64u << 20)) return false;
  out.resize(n);
  return read_all(fd, out.data(), n);
}

}  // namespace

TcpStoreServer::TcpStoreServer(int port) : port_(port) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  DSV4_CHECK(listen_fd_ >= 0, "rendezvous: socket(): {}", std::strerror(errno));
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(uint16_t(port));
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    const int e = errno;
    ::close(listen_fd_);
    if (e == EADDRINUSE)
      fail("rendezvous: --master-port {} is in use on this host (another dsv4, or another program); stop it or "
           "pick another port",
           port);
    fail("rendezvous: cannot bind port {}: {}", port, std::strerror(e));
  }
  DSV4_CHECK(::listen(listen_fd_, 64) == 0, "rendezvous: listen(): {}", std::strerror(errno));
  accept_ = std::thread([this] { accept_loop(); });
}

TcpStoreServer::~TcpStoreServer() {
  stop_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);
  ::close(listen_fd_);
  accept_.join();
  {
    std::lock_guard l(mu_);
    for (int fd : clients_) ::shutdown(fd, SHUT_RDWR);
  }
  for (auto& t : threads_) t.join();
  for (int fd : clients_) ::close(fd);
}

void TcpStoreServer::accept_loop() {
  while (!stop_) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down
    }
    std::lock_guard l(mu_);
    if (stop_) {
      ::close(fd);
      return;
    }
    clients_.push_back(fd);
    threads_.emplace_back([this, fd] { serve(fd); });
  }
}

void TcpStoreServer::serve(int fd) {
  while (!stop_) {
    char op = 0;
    std::vector<char> key, val;
    if (!read_all(fd, &op, 1) || !read_blob(fd, key)) return;
    const std::string k(key.begin(), key.end());
    if (op == 'S') {
      if (!read_blob(fd, val)) return;
      {
        std::lock_guard l(mu_);
        kv_[k] = std::move(val);
      }
      const char ok = 1;
      if (!write_all(fd, &ok, 1)) return;
    } else if (op == 'G') {
      std::optional<std::vector<char>> v;
      {
        std::lock_guard l(mu_);
        auto it = kv_.find(k);
        if (it != kv_.end()) v = it->second;
      }
      const char found = v ? 1 : 0;
      if (!write_all(fd, &found, 1)) return;
      if (v && !write_blob(fd, v->data(), uint32_t(v->size()))) return;
    } else {
      return;  // not our protocol: drop the connection
    }
  }
}

TcpStore::TcpStore(const std::string& host, int port, std::chrono::milliseconds timeout)
    : host_(host), port_(port), timeout_(timeout) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) fail("rendezvous: cannot resolve --master-addr '{}': {}", host, gai_strerror(rc));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last = "no attempt";
  while (true) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ >= 0 && ::connect(fd_, res->ai_addr, res->ai_addrlen) == 0) break;
    last = std::strerror(errno);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (std::chrono::steady_clock::now() >= deadline) {
      ::freeaddrinfo(res);
      fail("rendezvous: cannot reach the master at {}:{} within {} s ({}): is rank 0 (the head node) started, "
           "--master-addr its address on this network and the port open?",
           host, port, timeout.count() / 1000, last);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::freeaddrinfo(res);
  const int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
}

void TcpStore::set(const std::string& key, const std::vector<char>& data) {
  std::lock_guard l(mu_);
  const char op = 'S';
  char ok = 0;
  if (!write_all(fd_, &op, 1) || !write_blob(fd_, key.data(), uint32_t(key.size())) ||
      !write_blob(fd_, data.data(), uint32_t(data.size())) || !read_all(fd_, &ok, 1))
    fail("rendezvous: lost the connection to the master at {}:{}", host_, port_);
}

std::optional<std::vector<char>> TcpStore::try_get(const std::string& key) {
  std::lock_guard l(mu_);
  const char op = 'G';
  char found = 0;
  if (!write_all(fd_, &op, 1) || !write_blob(fd_, key.data(), uint32_t(key.size())) || !read_all(fd_, &found, 1))
    fail("rendezvous: lost the connection to the master at {}:{}", host_, port_);
  if (!found) return std::nullopt;
  std::vector<char> v;
  if (!read_blob(fd_, v)) fail("rendezvous: lost the connection to the master at {}:{}", host_, port_);
  return v;
}

std::vector<std::string> TcpStore::wait_for(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<std::string> missing = keys;
  while (true) {
    std::vector<std::string> still;
    for (auto& k : missing)
      if (!try_get(k)) still.push_back(k);
    missing.swap(still);
    if (missing.empty() || std::chrono::steady_clock::now() >= deadline) return missing;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void TcpStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  const auto missing = wait_for(keys, timeout);
  if (!missing.empty())
    fail("rendezvous: '{}' was not published within {} s (a rank stopped during start-up?)", missing.front(),
         timeout.count() / 1000);
}

std::vector<char> TcpStore::get(const std::string& key) {
  wait({key}, timeout_);
  return *try_get(key);
}

}  // namespace dsv4::dist
