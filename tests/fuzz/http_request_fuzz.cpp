// libFuzzer: bytes as a client sends them, through the request reader the server uses (split into reads as
// TCP might deliver them, pipelined requests included), then every complete JSON request through the
// reader with its caps and the OpenAI / Anthropic chat mapping. The property: nothing a client sends escapes
// as anything but a 4xx that names its field. A reader error outside 400-499, a nlohmann exception (a
// field accessed unchecked: a 400 without the field's name) or any other exception aborts (libFuzzer records
// the input). ASan/UBSan catch memory and UB errors. Built with NDEBUG, as the server is: Boost 1.74's Beast
// has a debug assertion (basic_parser::parse_chunk_header, n >= 5) that a final chunk arriving a byte at a
// time trips while the code under it stays in bounds (ASan-clean).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "core/error.h"
#include "server/chat_prompt.h"
#include "server/http_request.h"
#include "server/json_fields.h"

using namespace dsv4;
using namespace dsv4::server;

namespace {

void map_json(Route route, std::string_view body) {
  try {
    const Json j = parse_body(body);
    if (route == Route::ChatCompletions || route == Route::Tokenize) openai_chat_prompt(j, {});
    if (route == Route::Messages || route == Route::CountTokens) anthropic_chat_prompt(j, {});
  } catch (const ApiError& e) {
    if (e.status < 400 || e.status > 499) std::abort();
  } catch (const Error&) {
    // dsv4::Error: the server answers 400.
  } catch (const Json::exception& e) {
    // An unchecked wrong-typed access: the server would answer 400, but without naming the field.
    std::fprintf(stderr, "unchecked JSON access: %s\n", e.what());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const HttpLimits lim = [] {
    HttpLimits l;
    l.max_header_bytes = 4096;
    return l;
  }();
  const uint8_t mode = data[0];
  ++data;
  --size;
  // High bit: the rest is a JSON body for one route, which reaches the mapping far more often than bytes
  // that must first form a valid HTTP request.
  if (mode & 0x80) {
    map_json(mode & 1 ? Route::Messages : Route::ChatCompletions,
             std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
  }
  RequestReader reader(lim, 1u << 20, 64u << 10);
  boost::beast::flat_buffer in;
  const size_t step = size_t(mode % 64) + 1;
  for (size_t off = 0; off < size;) {
    const size_t n = std::min(step, size - off);
    auto buf = in.prepare(n);
    std::memcpy(buf.data(), data + off, n);
    in.commit(n);
    off += n;
    for (;;) {
      const auto st = reader.feed(in);
      if (st == RequestReader::State::NeedMore) break;
      if (st == RequestReader::State::Error) {
        if (reader.error().status < 400 || reader.error().status > 499) std::abort();
        return 0;  // the server answers and closes
      }
      map_json(reader.route().route->route, reader.request().body());
      reader.reset();  // the next pipelined request
    }
  }
  return 0;
}
