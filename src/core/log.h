// Logging goes through spdlog; this header only fixes the project-wide setup.
#pragma once
#include <spdlog/spdlog.h>

namespace dsv4 {
// Level from DSV4_LOG_LEVEL (trace, debug, info, warn, error); logs go to stderr so stdout stays data.
void init_logging();
}  // namespace dsv4
