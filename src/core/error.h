// Errors: one exception type carrying a formatted message. Loaders and the CLI report it and exit;
// nothing in the engine aborts on bad input.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace dsv4 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

#define DSV4_CHECK(cond, ...)                 \
  do {                                        \
    if (!(cond)) ::dsv4::fail(__VA_ARGS__);   \
  } while (0)

}  // namespace dsv4
