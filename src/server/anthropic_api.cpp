// POST /v1/messages (Anthropic Messages API, streaming and not) and POST /v1/messages/count_tokens.
#include <fmt/format.h>

#include "server/chat_prompt.h"
#include "server/handlers.h"
#include "server/json_fields.h"
#include "server/openai_common.h"
#include "server/sse.h"
#include "server/structured_output.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

namespace {

std::string tool_use_id(const std::string& call_id) {
  return call_id.rfind("call_", 0) == 0 ? "toolu_" + call_id.substr(5) : call_id;
}

Json tool_input(const std::string& arguments) {
  try {
    Json j = Json::parse(arguments);
    if (j.is_object()) return j;
  } catch (const Json::exception&) {
  }
  return Json::object();
}

const char* stop_reason_of(const ChoiceResult& r) {
  if (r.finish_reason == "tool_calls") return "tool_use";
  if (r.finish_reason == "length") return "max_tokens";
  if (r.finish_reason == "stop" && r.stop_reason.is_string()) return "stop_sequence";
  return "end_turn";
}

Json stop_sequence_of(const ChoiceResult& r) { return r.stop_reason.is_string() ? r.stop_reason : Json(nullptr); }

// Anthropic counts cache reads apart from input_tokens.
Json usage_of(const Generation& g) {
  return Json{{"input_tokens", g.prompt_tokens() - g.cached_tokens()},
              {"cache_creation_input_tokens", 0},
              {"cache_read_input_tokens", g.cached_tokens()},
              {"output_tokens", g.completion_tokens()},
              {"output_tokens_details", {{"reasoning_tokens", g.reasoning_tokens()}}}};
}

}  // namespace

Reply handle_messages(ServerContext& ctx, const HttpRequest& hreq) {
  const auto arrival = std::chrono::steady_clock::now();
  const Json body = parse_body(hreq.body);
  if (!get_string(body, "model")) throw ApiError(400, "model: Field required", "model");
  const std::string model = check_model(ctx, body);
  auto max_tokens = get_int(body, "max_tokens");
  if (!max_tokens) throw ApiError(400, "max_tokens: Field required", "max_tokens");
  const ChatPrompt cp = anthropic_chat_prompt(body, ctx.opt.chat);
  std::vector<int32_t> ids = ctx.tok.encode(cp.text);

  GenerationRequest gr;
  gr.params = default_sampling(ctx);
  if (auto t = get_number(body, "temperature")) {
    if (*t < 0 || *t > 1) throw ApiError(400, "temperature: must be between 0 and 1", "temperature");
    gr.params.temperature = float(*t);
  }
  if (auto v = get_number(body, "top_p")) gr.params.top_p = float(*v);
  if (auto v = get_int(body, "top_k")) gr.params.top_k = int(std::clamp<int64_t>(*v, -2, 1 << 30));
  if (const Json* s = find_field(body, "stop_sequences")) gr.params.stop = parse_stop(*s, "stop_sequences");
  gr.params.max_tokens = resolve_max_tokens(ctx, max_tokens, int64_t(ids.size()), "max_tokens");
  gr.chat = true;
  gr.thinking = cp.thinking;
  gr.tools = cp.tools;
  apply_constraint(ctx, cp.constraint, cp.constraint_param, true, gr.params);
  gr.arrival = arrival;
  gr.prompts.push_back(std::move(ids));
  const bool stream = get_bool(body, "stream").value_or(false);
  auto gen = std::make_shared<Generation>(ctx, std::move(gr));
  const std::string id = random_id("msg_");

  if (!stream) {
    run_non_streaming(ctx, *gen, hreq);
    const ChoiceResult& r = gen->result(0);
    Json content = Json::array();
    if (!r.reasoning.empty())
      content.push_back(Json{{"type", "thinking"}, {"thinking", r.reasoning}, {"signature", ""}});
    if (!r.content.empty() || r.tool_calls.empty()) content.push_back(Json{{"type", "text"}, {"text", r.content}});
    for (const auto& c : r.tool_calls)
      content.push_back(
          Json{{"type", "tool_use"}, {"id", tool_use_id(c.id)}, {"name", c.name}, {"input", tool_input(c.arguments)}});
    return json_reply(Json{{"id", id},
                           {"type", "message"},
                           {"role", "assistant"},
                           {"model", model},
                           {"content", std::move(content)},
                           {"stop_reason", stop_reason_of(r)},
                           {"stop_sequence", stop_sequence_of(r)},
                           {"usage", usage_of(*gen)}});
  }

  Reply rep;
  rep.content_type = "text/event-stream";
  rep.stream = [&ctx, gen, id, model](StreamSink& sink) {
    auto send = [&](const char* name, const Json& data) { return sink.write(sse_event(name, dump(data))); };
    const Json start_usage = {{"input_tokens", gen->prompt_tokens()},
                              {"cache_creation_input_tokens", 0},
                              {"cache_read_input_tokens", 0},
                              {"output_tokens", 0}};
    if (!send("message_start", Json{{"type", "message_start"},
                                    {"message",
                                     {{"id", id},
                                      {"type", "message"},
                                      {"role", "assistant"},
                                      {"model", model},
                                      {"content", Json::array()},
                                      {"stop_reason", nullptr},
                                      {"stop_sequence", nullptr},
                                      {"usage", start_usage}}}}) ||
        !send("ping", Json{{"type", "ping"}}))
      return;
    // One content block open at a time: thinking, text, or a tool_use (opened and closed in one go).
    enum class Open { None, Thinking, Text } open = Open::None;
    int index = -1;
    auto close = [&] {
      if (open == Open::None) return true;
      open = Open::None;
      return send("content_block_stop", Json{{"type", "content_block_stop"}, {"index", index}});
    };
    auto ensure = [&](Open want) {
      if (open == want) return true;
      if (!close()) return false;
      open = want;
      ++index;
      Json block = want == Open::Thinking ? Json{{"type", "thinking"}, {"thinking", ""}, {"signature", ""}}
                                          : Json{{"type", "text"}, {"text", ""}};
      return send("content_block_start",
                  Json{{"type", "content_block_start"}, {"index", index}, {"content_block", block}});
    };
    auto on_events = [&](std::vector<GenEvent>& evs) {
      for (auto& e : evs) {
        bool ok = true;
        switch (e.kind) {
          case GenEvent::Kind::Reasoning:
            ok = ensure(Open::Thinking) &&
                 send("content_block_delta", Json{{"type", "content_block_delta"},
                                                  {"index", index},
                                                  {"delta", {{"type", "thinking_delta"}, {"thinking", e.text}}}});
            break;
          case GenEvent::Kind::Content:
            ok = ensure(Open::Text) &&
                 send("content_block_delta", Json{{"type", "content_block_delta"},
                                                  {"index", index},
                                                  {"delta", {{"type", "text_delta"}, {"text", e.text}}}});
            break;
          case GenEvent::Kind::ToolCallStart:
            ok = close();
            ++index;
            ok = ok && send("content_block_start", Json{{"type", "content_block_start"},
                                                        {"index", index},
                                                        {"content_block",
                                                         {{"type", "tool_use"},
                                                          {"id", tool_use_id(e.call.id)},
                                                          {"name", e.call.name},
                                                          {"input", Json::object()}}}});
            break;
          case GenEvent::Kind::ToolCallArguments:  // streamed as generated: partial_json pieces
            ok = send("content_block_delta",
                      Json{{"type", "content_block_delta"},
                           {"index", index},
                           {"delta", {{"type", "input_json_delta"}, {"partial_json", e.text}}}});
            break;
          case GenEvent::Kind::ToolCall:
            ok = send("content_block_stop", Json{{"type", "content_block_stop"}, {"index", index}});
            break;
          case GenEvent::Kind::Finished: {
            const ChoiceResult& r = gen->result(0);
            if (r.finish_reason == "error" || r.finish_reason == "abort") {
              // An abort that reaches the stream is the server shutting down: never a clean message_stop.
              ok = send("error", r.finish_reason == "abort"
                                     ? error_json(Api::Anthropic, 503, "the server is shutting down")
                                     : error_json(Api::Anthropic, 500, "generation failed: " + r.error));
              break;
            }
            if (index < 0) ok = ensure(Open::Text);  // every message has at least one content block
            ok = ok && close() &&
                 send("message_delta",
                      Json{{"type", "message_delta"},
                           {"delta", {{"stop_reason", stop_reason_of(r)}, {"stop_sequence", stop_sequence_of(r)}}},
                           {"usage", usage_of(*gen)}}) &&
                 send("message_stop", Json{{"type", "message_stop"}});
            break;
          }
        }
        if (!ok) return false;
      }
      return true;
    };
    run_generation(ctx, *gen, on_events, [&] { return sink.client_gone(); });
  };
  return rep;
}

Reply handle_count_tokens(ServerContext& ctx, const HttpRequest& hreq) {
  const Json body = parse_body(hreq.body);
  check_model(ctx, body);
  const ChatPrompt cp = anthropic_chat_prompt(body, ctx.opt.chat);
  return json_reply(Json{{"input_tokens", ctx.tok.encode(cp.text).size()}});
}

}  // namespace dsv4::server
