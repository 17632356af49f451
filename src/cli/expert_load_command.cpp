// dsv4 expert-load: a running server's expert load statistics (GET /expert_load) as a table, with the rank
// loads expert parallelism over N ranks would see with experts split by id and under the EPLB placement.
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <regex>

#include "cli/commands.h"
#include "core/error.h"
#include "runtime/expert_load.h"

namespace dsv4::cli {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

std::string http_get(const std::string& url, const std::string& path) {
  static const std::regex re(R"(^http://([^/:]+)(?::(\d+))?/?$)");
  std::smatch m;
  if (!std::regex_match(url, m, re)) fail("--url '{}': expected http://host[:port]", url);
  const std::string host = m[1], port = m[2].matched ? std::string(m[2]) : "80";
  try {
    boost::asio::io_context io;
    tcp::resolver resolver(io);
    beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(30));
    stream.connect(resolver.resolve(host, port));
    http::request<http::empty_body> req{http::verb::get, path, 11};
    req.set(http::field::host, host);
    http::write(stream, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(stream, buf, res);
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    if (res.result_int() != 200) fail("GET {}{}: HTTP {}: {}", url, path, res.result_int(), res.body());
    return res.body();
  } catch (const boost::system::system_error& e) {
    fail("GET {}{}: {}", url, path, e.what());
  }
}

}  // namespace

void add_expert_load_command(CLI::App& app) {
  struct Opts {
    std::string url = "http://127.0.0.1:8000";
    int ep_size = 1, redundant = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("expert-load",
                                 "Print a server's expert load statistics: tokens per routed expert and layer over "
                                 "its window, max/mean imbalance, and the rank loads of expert parallelism");
  cmd->add_option("--url", o->url, "the server")->capture_default_str();
  cmd->add_option("--ep-size", o->ep_size, "also show max/mean rank load over N expert-parallel ranks")
      ->capture_default_str();
  cmd->add_option("--num-redundant-experts", o->redundant,
                  "with --ep-size: also under the EPLB placement with R redundant expert slots")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "print the server's JSON document instead of the table");
  cmd->callback([o] {
    if (o->ep_size < 1 || o->redundant < 0) fail("--ep-size must be >= 1 and --num-redundant-experts >= 0");
    const std::string body = http_get(o->url, "/expert_load");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(body);
    } catch (const nlohmann::json::exception& e) {
      fail("GET {}/expert_load: not JSON: {}", o->url, e.what());
    }
    if (o->json) {
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("%s", format_expert_load(ExpertLoadSnapshot::from_json(j), o->ep_size, o->redundant).c_str());
  });
}

}  // namespace dsv4::cli
