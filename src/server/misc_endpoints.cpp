// GET /v1/models, POST /tokenize, POST /detokenize (vLLM's shapes), and the Reply helpers.
#include <fmt/format.h>

#include "core/error.h"
#include "server/chat_prompt.h"
#include "server/handlers.h"
#include "server/json_fields.h"
#include "server/openai_common.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

Reply json_reply(const Json& j, int status) {
  Reply r;
  r.status = status;
  r.body = dump(j);
  return r;
}

Reply error_reply(Api api, const ApiError& e) { return json_reply(error_json(api, e), e.status); }

Reply handle_models(ServerContext& ctx) {
  Json data = Json::array();
  const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(ctx.started.time_since_epoch()).count();
  for (const auto& name : ctx.opt.model_names)
    data.push_back(Json{{"id", name},
                        {"object", "model"},
                        {"created", created},
                        {"owned_by", "dsv4"},
                        {"root", ctx.opt.model_dir},
                        {"parent", nullptr},
                        {"max_model_len", ctx.generator.max_model_len()}});
  return json_reply(Json{{"object", "list"}, {"data", std::move(data)}});
}

Reply handle_tokenize(ServerContext& ctx, const HttpRequest& req) {
  const Json body = parse_body(req.body);
  check_model(ctx, body);
  std::vector<int32_t> ids;
  if (body.contains("messages")) {
    // Chat form: the prompt exactly as /v1/chat/completions renders it (always with the generation prompt).
    ids = ctx.tok.encode(openai_chat_prompt(body, ctx.opt.chat).text);
  } else {
    auto prompt = get_string(body, "prompt");
    if (!prompt) throw ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt");
    if (get_bool(body, "add_special_tokens").value_or(true) && ctx.opt.completions_add_bos)
      ids.push_back(Tokenizer::kBos);
    ctx.tok.encode_append(*prompt, ids);
  }
  Json out = {{"count", ids.size()}, {"max_model_len", ctx.generator.max_model_len()}, {"tokens", ids}};
  if (get_bool(body, "return_token_strs").value_or(false)) {
    Json strs = Json::array();
    for (int32_t id : ids) strs.push_back(ctx.tok.id_to_token(id).value_or(""));
    out["token_strs"] = std::move(strs);
  } else {
    out["token_strs"] = nullptr;
  }
  return json_reply(out);
}

Reply handle_detokenize(ServerContext& ctx, const HttpRequest& req) {
  const Json body = parse_body(req.body);
  check_model(ctx, body);
  const Json* tokens = get_array(body, "tokens");
  if (!tokens) throw ApiError(400, "'tokens' (an array of token ids) is required", "tokens");
  std::vector<int32_t> ids;
  for (const auto& t : *tokens) {
    if (!t.is_number_integer()) throw ApiError(400, "'tokens' must be an array of integers", "tokens");
    const int64_t v = t.get<int64_t>();
    if (v < 0 || v > INT32_MAX || !ctx.tok.is_token(int32_t(v)))
      throw ApiError(400, fmt::format("token id {} is not in the vocabulary", v), "tokens");
    ids.push_back(int32_t(v));
  }
  return json_reply(Json{{"prompt", utf8_lossy(ctx.tok.decode(ids))}});
}

}  // namespace dsv4::server
