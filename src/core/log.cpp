#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>

namespace dsv4 {
void init_logging() {
  static bool done = false;
  if (done) return;
  done = true;
  auto logger = spdlog::stderr_color_mt("dsv4");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  if (const char* lvl = std::getenv("DSV4_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(lvl));
}
}  // namespace dsv4
