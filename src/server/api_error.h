// Request errors, answered in each API's own error shape with an HTTP status.
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace dsv4::server {

using Json = nlohmann::ordered_json;

enum class Api { OpenAI, Anthropic };

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = {}, std::string code = {})
      : std::runtime_error(message), status(status), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string param;  // the offending request field, when there is one
  std::string code;   // OpenAI's machine-readable code ("model_not_found", "invalid_api_key"), optional
};

// OpenAI: {"error": {"message", "type", "param", "code"}}.
// Anthropic: {"type": "error", "error": {"type", "message"}}.
Json error_json(Api api, int status, const std::string& message, const std::string& param = {},
                const std::string& code = {});
inline Json error_json(Api api, const ApiError& e) { return error_json(api, e.status, e.what(), e.param, e.code); }

// The API a path belongs to, for errors raised before routing (auth, body size, unknown path).
inline Api api_of_path(const std::string& path) {
  return path.rfind("/v1/messages", 0) == 0 ? Api::Anthropic : Api::OpenAI;
}

}  // namespace dsv4::server
