// POST /v1/chat/completions and POST /v1/completions, streaming and not, in OpenAI's (and vLLM's) shapes.
#include <fmt/format.h>

#include "core/error.h"
#include "server/chat_prompt.h"
#include "server/handlers.h"
#include "server/json_fields.h"
#include "server/openai_common.h"
#include "server/sse.h"
#include "server/structured_output.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

namespace {

Json tool_calls_json(const std::vector<ParsedToolCall>& calls) {
  Json a = Json::array();
  for (const auto& c : calls)
    a.push_back(Json{{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  return a;
}

}  // namespace

Reply handle_chat_completions(ServerContext& ctx, const HttpRequest& hreq) {
  const auto arrival = std::chrono::steady_clock::now();
  const Json body = parse_body(hreq.body);
  const std::string model = check_model(ctx, body);
  const ChatPrompt cp = openai_chat_prompt(body, ctx.opt.chat);
  std::vector<int32_t> ids = ctx.tok.encode(cp.text);

  GenerationRequest gr;
  const OpenAIFields of = apply_openai_fields(ctx, body, 1, gr);
  auto mct = get_int(body, "max_completion_tokens");
  const char* mt_field = mct ? "max_completion_tokens" : "max_tokens";
  gr.params.max_tokens =
      resolve_max_tokens(ctx, mct ? mct : get_int(body, "max_tokens"), int64_t(ids.size()), mt_field);
  const bool logprobs = get_bool(body, "logprobs").value_or(false);
  const int64_t top = get_int(body, "top_logprobs").value_or(0);
  if (top < 0 || top > SamplingParams::kMaxLogprobs)
    throw ApiError(400, fmt::format("'top_logprobs' must be between 0 and {}", SamplingParams::kMaxLogprobs),
                   "top_logprobs");
  if (top > 0 && !logprobs) throw ApiError(400, "'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
  if (logprobs) gr.params.logprobs = int(top);
  gr.chat = true;
  gr.thinking = cp.thinking;
  gr.tools = cp.tools;
  apply_constraint(ctx, cp.constraint, cp.constraint_param, true, gr.params);
  gr.arrival = arrival;
  gr.prompts.push_back(std::move(ids));
  auto gen = std::make_shared<Generation>(ctx, std::move(gr));
  const std::string id = random_id("chatcmpl-");
  const int64_t created = unix_time();

  if (!of.stream) {
    run_non_streaming(ctx, *gen, hreq);
    Json choices = Json::array();
    for (int i = 0; i < gen->num_choices(); ++i) {
      const ChoiceResult& r = gen->result(i);
      Json msg = {{"role", "assistant"}};
      msg["content"] = r.content.empty() && !r.tool_calls.empty() ? Json(nullptr) : Json(r.content);
      msg["reasoning_content"] = r.reasoning.empty() ? Json(nullptr) : Json(r.reasoning);
      if (!r.tool_calls.empty()) msg["tool_calls"] = tool_calls_json(r.tool_calls);
      choices.push_back(Json{{"index", i},
                             {"message", std::move(msg)},
                             {"logprobs", logprobs ? chat_logprobs_json(ctx.tok, r.logprobs, int(top)) : Json(nullptr)},
                             {"finish_reason", r.finish_reason},
                             {"stop_reason", r.stop_reason}});
    }
    return json_reply(Json{{"id", id},
                           {"object", "chat.completion"},
                           {"created", created},
                           {"model", model},
                           {"choices", std::move(choices)},
                           {"usage", usage_json(*gen)}});
  }

  Reply rep;
  rep.content_type = "text/event-stream";
  rep.stream = [&ctx, gen, id, created, model, logprobs, top, of](StreamSink& sink) {
    const OpenAIChunkHead head{id, "chat.completion.chunk", created, model, of.include_usage};
    auto chunk = [&](int i, Json delta, const char* finish, const Json& stop_reason) {
      Json choice = {{"index", i}, {"delta", std::move(delta)}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
      if (logprobs) {
        auto lps = gen->take_logprobs(i);
        if (!lps.empty()) choice["logprobs"] = chat_logprobs_json(ctx.tok, lps, int(top));
      }
      if (finish) {
        choice["finish_reason"] = finish;
        choice["stop_reason"] = stop_reason;
      }
      return sink.write(sse_data(dump(head.chunk(Json::array({std::move(choice)})))));
    };
    for (int i = 0; i < gen->num_choices(); ++i)
      if (!chunk(i, Json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr)) return;
    std::vector<int> tool_index(size_t(gen->num_choices()), 0);
    auto on_events = [&](std::vector<GenEvent>& evs) {
      for (auto& e : evs) {
        bool ok = true;
        switch (e.kind) {
          case GenEvent::Kind::Reasoning:
            ok = chunk(e.choice, Json{{"reasoning_content", e.text}}, nullptr, nullptr);
            break;
          case GenEvent::Kind::Content:
            ok = chunk(e.choice, Json{{"content", e.text}}, nullptr, nullptr);
            break;
          case GenEvent::Kind::ToolCallStart:
            // The id and name first, then the arguments as they are generated (clients concatenate them).
            ok = chunk(e.choice,
                       Json{{"tool_calls",
                             Json::array({Json{{"index", tool_index[size_t(e.choice)]},
                                               {"id", e.call.id},
                                               {"type", "function"},
                                               {"function", {{"name", e.call.name}, {"arguments", ""}}}}})}},
                       nullptr, nullptr);
            break;
          case GenEvent::Kind::ToolCallArguments:
            ok = chunk(e.choice,
                       Json{{"tool_calls", Json::array({Json{{"index", tool_index[size_t(e.choice)]},
                                                             {"function", {{"arguments", e.text}}}}})}},
                       nullptr, nullptr);
            break;
          case GenEvent::Kind::ToolCall:
            ++tool_index[size_t(e.choice)];
            break;
          case GenEvent::Kind::Finished: {
            const ChoiceResult& r = gen->result(e.choice);
            if (r.finish_reason == "error")
              ok = sink.write(sse_data(dump(error_json(Api::OpenAI, 500, "generation failed: " + r.error))));
            ok = ok && chunk(e.choice, Json::object(), r.finish_reason.c_str(), r.stop_reason);
            break;
          }
        }
        if (!ok) return false;
      }
      return true;
    };
    if (!run_generation(ctx, *gen, on_events, [&] { return sink.client_gone(); })) return;
    head.finish(sink, *gen);
  };
  return rep;
}

Reply handle_completions(ServerContext& ctx, const HttpRequest& hreq) {
  const auto arrival = std::chrono::steady_clock::now();
  const Json body = parse_body(hreq.body);
  const std::string model = check_model(ctx, body);
  const Json* prompt = find_field(body, "prompt");
  if (!prompt) throw ApiError(400, "'prompt' is required", "prompt");
  const bool add_special = get_bool(body, "add_special_tokens").value_or(true);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> prompt_texts;  // for echo
  auto add_text = [&](const std::string& s) {
    std::vector<int32_t> ids;
    if (add_special && ctx.opt.completions_add_bos) ids.push_back(Tokenizer::kBos);
    ctx.tok.encode_append(s, ids);
    prompts.push_back(std::move(ids));
    prompt_texts.push_back(s);
  };
  auto add_ids = [&](const Json& a) {
    std::vector<int32_t> ids;
    for (const auto& t : a) {
      if (!t.is_number_integer()) throw ApiError(400, "'prompt' token ids must be integers", "prompt");
      const int64_t v = t.get<int64_t>();
      if (v < 0 || v >= ctx.generator.vocab_size())
        throw ApiError(400, fmt::format("token id {} is out of range [0, {})", v, ctx.generator.vocab_size()), "prompt");
      ids.push_back(int32_t(v));
    }
    std::string text;
    try {
      text = ctx.tok.decode(ids);
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "prompt");
    }
    prompt_texts.push_back(std::move(text));
    prompts.push_back(std::move(ids));
  };
  const char* shape_error =
      "'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token ids";
  if (prompt->is_string()) {
    add_text(prompt->get<std::string>());
  } else if (prompt->is_array() && !prompt->empty()) {
    if ((*prompt)[0].is_number()) {
      add_ids(*prompt);
    } else {
      for (const auto& p : *prompt) {
        if (p.is_string())
          add_text(p.get<std::string>());
        else if (p.is_array())
          add_ids(p);
        else
          throw ApiError(400, shape_error, "prompt");
      }
    }
  } else {
    throw ApiError(400, shape_error, "prompt");
  }
  for (const auto& p : prompts)
    if (p.empty()) throw ApiError(400, "the prompt is empty", "prompt");
  if (auto s = get_string(body, "suffix"); s && !s->empty()) throw ApiError(400, "'suffix' is not supported", "suffix");
  const bool echo = get_bool(body, "echo").value_or(false);
  const int64_t lp = get_int(body, "logprobs").value_or(-1);
  if (lp > SamplingParams::kMaxLogprobs || lp < -1)
    throw ApiError(400, fmt::format("'logprobs' must be between 0 and {}", SamplingParams::kMaxLogprobs), "logprobs");
  if (echo && lp >= 0) throw ApiError(400, "'echo' together with 'logprobs' is not supported", "echo");

  GenerationRequest gr;
  const OpenAIFields of = apply_openai_fields(ctx, body, prompts.size(), gr);
  if (auto bo = get_int(body, "best_of"); bo && *bo != gr.n)
    throw ApiError(400, "'best_of' other than n is not supported", "best_of");
  // OpenAI's legacy default is 16 tokens (vLLM keeps it).
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, int64_t(p.size()));
  check_prompt_length(ctx, longest);
  auto mt = get_int(body, "max_tokens");
  if (!mt) mt = std::min<int64_t>(16, ctx.generator.max_model_len() - longest);
  gr.params.max_tokens = resolve_max_tokens(ctx, mt, longest, "max_tokens");
  gr.params.logprobs = int(lp);
  gr.skip_special_tokens = get_bool(body, "skip_special_tokens").value_or(true);
  // response_format on completions: the raw text is the JSON (no chat parsing, no reasoning part).
  apply_constraint(ctx, response_format_constraint(get_object(body, "response_format")), "response_format",
                   !gr.skip_special_tokens, gr.params);
  gr.arrival = arrival;
  gr.prompts = std::move(prompts);
  auto gen = std::make_shared<Generation>(ctx, std::move(gr));
  const std::string id = random_id("cmpl-");
  const int64_t created = unix_time();

  if (!of.stream) {
    run_non_streaming(ctx, *gen, hreq);
    Json choices = Json::array();
    for (int i = 0; i < gen->num_choices(); ++i) {
      const ChoiceResult& r = gen->result(i);
      const std::string prefix = echo ? prompt_texts[size_t(r.prompt_index)] : std::string();
      choices.push_back(
          Json{{"index", i},
               {"text", prefix + r.content},
               {"logprobs", lp >= 0 ? completion_logprobs_json(ctx.tok, r.logprobs, int(lp), 0) : Json(nullptr)},
               {"finish_reason", r.finish_reason},
               {"stop_reason", r.stop_reason}});
    }
    return json_reply(Json{{"id", id},
                           {"object", "text_completion"},
                           {"created", created},
                           {"model", model},
                           {"choices", std::move(choices)},
                           {"usage", usage_json(*gen)}});
  }

  Reply rep;
  rep.content_type = "text/event-stream";
  rep.stream = [&ctx, gen, id, created, model, lp, echo, prompt_texts, of](StreamSink& sink) {
    const OpenAIChunkHead head{id, "text_completion", created, model, of.include_usage};
    std::vector<size_t> offsets(size_t(gen->num_choices()), 0);
    auto chunk = [&](int i, const std::string& text, const char* finish, const Json& stop_reason) {
      Json choice = {{"index", i}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
      if (lp >= 0) {
        auto lps = gen->take_logprobs(i);
        if (!lps.empty()) choice["logprobs"] = completion_logprobs_json(ctx.tok, lps, int(lp), offsets[size_t(i)]);
      }
      offsets[size_t(i)] += text.size();
      if (finish) {
        choice["finish_reason"] = finish;
        choice["stop_reason"] = stop_reason;
      }
      return sink.write(sse_data(dump(head.chunk(Json::array({std::move(choice)})))));
    };
    if (echo)
      for (int i = 0; i < gen->num_choices(); ++i)
        if (!chunk(i, prompt_texts[size_t(gen->result(i).prompt_index)], nullptr, nullptr)) return;
    auto on_events = [&](std::vector<GenEvent>& evs) {
      for (auto& e : evs) {
        bool ok = true;
        if (e.kind == GenEvent::Kind::Content) {
          ok = chunk(e.choice, e.text, nullptr, nullptr);
        } else if (e.kind == GenEvent::Kind::Finished) {
          const ChoiceResult& r = gen->result(e.choice);
          if (r.finish_reason == "error")
            ok = sink.write(sse_data(dump(error_json(Api::OpenAI, 500, "generation failed: " + r.error))));
          ok = ok && chunk(e.choice, "", r.finish_reason.c_str(), r.stop_reason);
        }
        if (!ok) return false;
      }
      return true;
    };
    if (!run_generation(ctx, *gen, on_events, [&] { return sink.client_gone(); })) return;
    head.finish(sink, *gen);
  };
  return rep;
}

}  // namespace dsv4::server
