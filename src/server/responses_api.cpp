// POST /v1/responses (streaming and not), GET / DELETE /v1/responses/{id}, POST /v1/responses/{id}/cancel.
#include <fmt/format.h>

#include <thread>

#include "server/handlers.h"
#include "server/json_fields.h"
#include "server/openai_common.h"
#include "server/responses.h"
#include "server/sse.h"
#include "server/structured_output.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

namespace {

using namespace std::chrono_literals;

std::string suffix_of(const std::string& call_id) {
  return call_id.rfind("call_", 0) == 0 ? call_id.substr(5) : call_id;
}

// Output items and stream events from one choice's GenEvents. The same builder serves both modes, so a
// streamed response and a non-streamed one are the same items.
class OutputBuilder {
 public:
  using Emit = std::function<bool(const char* type, Json data)>;
  OutputBuilder(const ResponsesRequest& rr, Emit emit) : rr_(rr), emit_(std::move(emit)) {}

  bool on(GenEvent& e) {
    switch (e.kind) {
      case GenEvent::Kind::Reasoning:
        if (!ensure(Open::Reasoning)) return false;
        text_ += e.text;
        return emit_("response.reasoning_summary_text.delta",
                     Json{{"item_id", item()["id"]}, {"output_index", index()}, {"summary_index", 0}, {"delta", e.text}});
      case GenEvent::Kind::Content:
        if (!ensure(Open::Message)) return false;
        text_ += e.text;
        return emit_("response.output_text.delta", Json{{"item_id", item()["id"]},
                                                         {"output_index", index()},
                                                         {"content_index", 0},
                                                         {"delta", e.text},
                                                         {"logprobs", Json::array()}});
      case GenEvent::Kind::ToolCallStart: {
        if (!close()) return false;
        // parallel_tool_calls: false keeps the first call; nothing in decoding can stop a second one.
        if (!rr_.parallel_tool_calls && calls_ > 0) {
          skipping_ = true;
          return true;
        }
        ++calls_;
        Json it = {{"type", "function_call"},      {"id", "fc_" + suffix_of(e.call.id)},
                   {"call_id", e.call.id},         {"name", e.call.name},
                   {"arguments", ""},              {"status", "in_progress"}};
        if (auto ns = rr_.namespace_of.find(e.call.name); ns != rr_.namespace_of.end()) it["namespace"] = ns->second;
        return open_item(Open::Call, std::move(it));
      }
      case GenEvent::Kind::ToolCallArguments:
        if (skipping_ || open_ != Open::Call) return true;
        text_ += e.text;
        return emit_("response.function_call_arguments.delta",
                     Json{{"item_id", item()["id"]}, {"output_index", index()}, {"delta", e.text}});
      case GenEvent::Kind::ToolCall:
        if (skipping_) {
          skipping_ = false;
          return true;
        }
        if (open_ != Open::Call) return true;
        text_ = e.call.arguments;  // authoritative (equal to the deltas)
        tool_calls_.push_back(Json{{"id", e.call.id},
                                   {"type", "function"},
                                   {"function", {{"name", e.call.name}, {"arguments", e.call.arguments}}}});
        return close();
      case GenEvent::Kind::Finished:
        return close();
    }
    return true;
  }

  Json& output() { return output_; }
  // The assistant turn as a chat message, for previous_response_id.
  Json assistant_message() const {
    Json m = {{"role", "assistant"}, {"content", content_}};
    if (!reasoning_.empty()) m["reasoning_content"] = reasoning_;
    if (!tool_calls_.empty()) m["tool_calls"] = tool_calls_;
    return m;
  }

 private:
  enum class Open { None, Reasoning, Message, Call };
  Json& item() { return output_.back(); }
  int index() const { return int(output_.size()) - 1; }

  bool ensure(Open want) {
    if (open_ == want) return true;
    if (!close()) return false;
    if (want == Open::Reasoning)
      return open_item(want, Json{{"type", "reasoning"}, {"id", random_id("rs_")}, {"summary", Json::array()}}) &&
             emit_("response.reasoning_summary_part.added",
                   Json{{"item_id", item()["id"]},
                        {"output_index", index()},
                        {"summary_index", 0},
                        {"part", {{"type", "summary_text"}, {"text", ""}}}});
    return open_item(want, Json{{"type", "message"},
                                {"id", random_id("msg_")},
                                {"status", "in_progress"},
                                {"role", "assistant"},
                                {"content", Json::array()}}) &&
           emit_("response.content_part.added",
                 Json{{"item_id", item()["id"]},
                      {"output_index", index()},
                      {"content_index", 0},
                      {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", Json::array()}}}});
  }

  bool open_item(Open kind, Json it) {
    open_ = kind;
    text_.clear();
    output_.push_back(std::move(it));
    return emit_("response.output_item.added", Json{{"output_index", index()}, {"item", item()}});
  }

  bool close() {
    const Open was = open_;
    if (was == Open::None) return true;
    open_ = Open::None;
    Json& it = item();
    const Json id = it["id"];
    bool ok = true;
    if (was == Open::Reasoning) {
      reasoning_ += text_;
      Json part = {{"type", "summary_text"}, {"text", text_}};
      it["summary"] = Json::array({part});
      if (rr_.reasoning_in_encrypted_content) it["encrypted_content"] = text_;  // plain text: nothing to hide
      ok = emit_("response.reasoning_summary_text.done",
                 Json{{"item_id", id}, {"output_index", index()}, {"summary_index", 0}, {"text", text_}}) &&
           emit_("response.reasoning_summary_part.done",
                 Json{{"item_id", id}, {"output_index", index()}, {"summary_index", 0}, {"part", part}});
    } else if (was == Open::Message) {
      content_ += text_;
      Json part = {{"type", "output_text"}, {"text", text_}, {"annotations", Json::array()}, {"logprobs", Json::array()}};
      it["content"] = Json::array({part});
      it["status"] = "completed";
      ok = emit_("response.output_text.done", Json{{"item_id", id},
                                                   {"output_index", index()},
                                                   {"content_index", 0},
                                                   {"text", text_},
                                                   {"logprobs", Json::array()}}) &&
           emit_("response.content_part.done",
                 Json{{"item_id", id}, {"output_index", index()}, {"content_index", 0}, {"part", part}});
    } else {
      it["arguments"] = text_;
      it["status"] = "completed";
      ok = emit_("response.function_call_arguments.done",
                 Json{{"item_id", id}, {"output_index", index()}, {"name", it["name"]}, {"arguments", text_}});
    }
    return ok && emit_("response.output_item.done", Json{{"output_index", index()}, {"item", it}});
  }

  const ResponsesRequest& rr_;
  Emit emit_;
  Json output_ = Json::array();
  Open open_ = Open::None;
  std::string text_;  // the open item's text so far
  std::string content_, reasoning_;
  Json tool_calls_ = Json::array();
  int calls_ = 0;
  bool skipping_ = false;
};

Json usage_of(const Generation& g) {
  const int64_t p = g.prompt_tokens(), c = g.completion_tokens();
  return Json{{"input_tokens", p},
              {"input_tokens_details", {{"cached_tokens", g.cached_tokens()}}},
              {"output_tokens", c},
              {"output_tokens_details", {{"reasoning_tokens", g.reasoning_tokens()}}},
              {"total_tokens", p + c}};
}

// Status and the event that ends a stream, from how the choice ended.
const char* finalize(Json& resp, const Generation& g, bool cancelled) {
  const ChoiceResult& r = g.result(0);
  resp["usage"] = usage_of(g);
  if (cancelled) {
    resp["status"] = "cancelled";
    return "response.incomplete";
  }
  if (r.finish_reason == "error") {
    resp["status"] = "failed";
    resp["error"] = Json{{"code", "server_error"}, {"message", "generation failed: " + r.error}};
    return "response.failed";
  }
  if (r.finish_reason == "length") {
    resp["status"] = "incomplete";
    resp["incomplete_details"] = Json{{"reason", "max_output_tokens"}};
    return "response.incomplete";
  }
  resp["status"] = "completed";
  return "response.completed";
}

[[noreturn]] void not_found(const std::string& id) {
  throw ApiError(404, fmt::format("Response with id '{}' not found.", id), "response_id", "not_found");
}

}  // namespace

Reply handle_responses(ServerContext& ctx, const HttpRequest& hreq) {
  const auto arrival = std::chrono::steady_clock::now();
  const Json body = parse_body(hreq.body);
  const std::string model = check_model(ctx, body);
  if (get_bool(body, "background").value_or(false))
    throw ApiError(400, "'background' responses are not supported; stream instead", "background");
  auto rr = std::make_shared<ResponsesRequest>(responses_to_chat(body, ctx.responses));
  const ChatPrompt cp = openai_chat_prompt(rr->chat, ctx.opt.chat);
  std::vector<int32_t> ids = ctx.tok.encode(cp.text);

  GenerationRequest gr;
  gr.params = default_sampling(ctx);
  if (auto v = get_number(body, "temperature")) gr.params.temperature = float(*v);
  if (auto v = get_number(body, "top_p")) gr.params.top_p = float(*v);
  gr.params.max_tokens =
      resolve_max_tokens(ctx, get_int(body, "max_output_tokens"), int64_t(ids.size()), "max_output_tokens");
  gr.chat = true;
  gr.thinking = cp.thinking;
  gr.tools = cp.tools;
  apply_constraint(ctx, cp.constraint, cp.constraint_param, true, gr.params);
  gr.arrival = arrival;
  gr.prompts.push_back(std::move(ids));
  auto gen = std::make_shared<Generation>(ctx, std::move(gr));

  const bool store = get_bool(body, "store").value_or(true);
  const bool stream = get_bool(body, "stream").value_or(false);
  const std::string id = random_id("resp_");
  auto opt_field = [&](const char* k, Json dflt) {
    const Json* v = find_field(body, k);
    return v ? *v : dflt;
  };
  Json resp = {{"id", id},
               {"object", "response"},
               {"created_at", unix_time()},
               {"status", "in_progress"},
               {"background", false},
               {"error", nullptr},
               {"incomplete_details", nullptr},
               {"instructions", opt_field("instructions", nullptr)},
               {"max_output_tokens", opt_field("max_output_tokens", nullptr)},
               {"model", model},
               {"output", Json::array()},
               {"parallel_tool_calls", rr->parallel_tool_calls},
               {"previous_response_id", opt_field("previous_response_id", nullptr)},
               {"reasoning", opt_field("reasoning", Json{{"effort", nullptr}, {"summary", nullptr}})},
               {"store", store},
               {"temperature", opt_field("temperature", 1.0)},
               {"text", opt_field("text", Json{{"format", {{"type", "text"}}}})},
               {"tool_choice", opt_field("tool_choice", "auto")},
               {"tools", opt_field("tools", Json::array())},
               {"top_p", opt_field("top_p", 1.0)},
               {"truncation", "disabled"},
               {"usage", nullptr},
               {"user", opt_field("user", nullptr)},
               {"metadata", opt_field("metadata", Json::object())}};
  StoredResponse entry{resp, rr->conversation, std::make_shared<std::atomic<bool>>(false)};
  auto cancel = entry.cancel;
  if (store) ctx.responses.put(id, std::move(entry));
  auto save = [&ctx, store, id, rr](const Json& final_resp, OutputBuilder& b) {
    if (!store) return;
    Json conv = rr->conversation;
    conv.push_back(b.assistant_message());
    ctx.responses.update(id, final_resp, conv);
  };
  std::vector<std::pair<std::string, std::string>> headers;
  if (!rr->dropped_tools.empty())
    headers.emplace_back("x-dsv4-warning", fmt::format("dropped hosted tools the server cannot run: {}",
                                                       fmt::join(rr->dropped_tools, ", ")));

  if (!stream) {
    OutputBuilder b(*rr, [](const char*, Json) { return true; });
    const bool ok = run_generation(
        ctx, *gen, [&](std::vector<GenEvent>& evs) {
          for (auto& e : evs) b.on(e);
          return true;
        },
        [&] { return hreq.client_gone() || cancel->load(); });
    if (!ok && !cancel->load()) {
      if (store) ctx.responses.erase(id);
      if (ctx.stopping) throw ApiError(503, "the server is shutting down");
      throw ApiError(499, "client disconnected");
    }
    if (!ok) {
      GenEvent end{GenEvent::Kind::Finished, 0, {}, {}};
      b.on(end);
    }
    finalize(resp, *gen, !ok);
    resp["output"] = b.output();
    save(resp, b);
    Reply rep = json_reply(resp);
    rep.headers = std::move(headers);
    return rep;
  }

  Reply rep;
  rep.content_type = "text/event-stream";
  rep.headers = std::move(headers);
  rep.stream = [&ctx, gen, rr, resp, cancel, save](StreamSink& sink) mutable {
    int64_t seq = 0;
    auto emit = [&](const char* type, Json data) {
      Json ev = {{"type", type}, {"sequence_number", seq++}};
      for (auto& [k, v] : data.items()) ev[k] = std::move(v);
      return sink.write(sse_event(type, dump(ev)));
    };
    if (!emit("response.created", Json{{"response", resp}}) || !emit("response.in_progress", Json{{"response", resp}}))
      return;
    OutputBuilder b(*rr, emit);
    const bool ok = run_generation(
        ctx, *gen, [&](std::vector<GenEvent>& evs) {
          for (auto& e : evs)
            if (!b.on(e)) return false;
          return true;
        },
        [&] { return sink.client_gone() || cancel->load(); });
    if (!ok && !cancel->load()) return;  // the client is gone (or shutdown): nobody reads the rest
    if (!ok) {
      GenEvent end{GenEvent::Kind::Finished, 0, {}, {}};
      b.on(end);
    }
    const char* last = finalize(resp, *gen, !ok);
    resp["output"] = b.output();
    save(resp, b);
    emit(last, Json{{"response", resp}});
  };
  return rep;
}

Reply handle_get_response(ServerContext& ctx, const HttpRequest& req) {
  auto s = ctx.responses.get(req.path_id);
  if (!s) not_found(req.path_id);
  return json_reply(s->response);
}

Reply handle_cancel_response(ServerContext& ctx, const HttpRequest& req) {
  auto s = ctx.responses.get(req.path_id);
  if (!s) not_found(req.path_id);
  if (s->response.value("status", "") != "in_progress")
    throw ApiError(400, fmt::format("Response '{}' is {}; only an in-progress response can be cancelled", req.path_id,
                                    s->response.value("status", "")),
                   "response_id");
  s->cancel->store(true);
  // The generating thread notices within one poll (50 ms) and records the cancelled response.
  for (int i = 0; i < 100; ++i) {
    auto now = ctx.responses.get(req.path_id);
    if (!now || now->response.value("status", "") != "in_progress") return json_reply(now ? now->response : s->response);
    std::this_thread::sleep_for(20ms);
  }
  return json_reply(s->response);
}

Reply handle_delete_response(ServerContext& ctx, const HttpRequest& req) {
  auto s = ctx.responses.get(req.path_id);
  if (!s) not_found(req.path_id);
  s->cancel->store(true);
  ctx.responses.erase(req.path_id);
  return json_reply(Json{{"id", req.path_id}, {"object", "response"}, {"deleted", true}});
}

}  // namespace dsv4::server
