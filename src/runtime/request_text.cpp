#include "runtime/request_text.h"

#include "core/error.h"

namespace dsv4 {

namespace {
std::vector<std::string> non_empty(std::vector<std::string> v) {
  std::erase_if(v, [](const std::string& s) { return s.empty(); });
  return v;
}
}  // namespace

RequestText::RequestText(const Tokenizer& tok, const SamplingParams& params, TextOptions opt)
    : detok_(tok, !opt.chat && opt.skip_special_tokens),
      stop_list_(non_empty(params.stop)),
      include_stop_(params.include_stop_str_in_output),
      stops_(stop_list_, include_stop_),
      opt_(opt) {
  if (opt_.chat) parser_ = std::make_unique<StreamingOutputParser>(*opt_.chat, opt_.tool_call_id_seed);
}

void RequestText::add(int32_t token, bool stop_token, std::vector<OutputEvent>& out) {
  if (stopped() || stop_token) return;
  std::string piece;
  try {
    detok_.push(token, piece);
  } catch (const Error&) {  // an id the tokenizer lacks (model vocab larger than the tokenizer's)
    piece += "\xEF\xBF\xBD";
  }
  if (!piece.empty()) feed(piece, out);
}

void RequestText::finish(std::vector<OutputEvent>& out) {
  if (stopped()) return;
  const std::string tail = detok_.finish();
  if (!tail.empty()) feed(tail, out);
  if (parser_ && !stopped()) {
    std::vector<OutputEvent> pe;
    parser_->finish(pe);
    route(pe, out);
  }
  if (!stopped()) release_held(out);
}

namespace {
std::string join_content(std::vector<OutputEvent>& ev) {
  std::string s;
  for (auto& e : ev) s += e.text;
  return s;
}
}  // namespace

std::string RequestText::add(int32_t token, bool stop_token) {
  std::vector<OutputEvent> ev;
  add(token, stop_token, ev);
  return join_content(ev);
}

std::string RequestText::finish() {
  std::vector<OutputEvent> ev;
  finish(ev);
  return join_content(ev);
}

void RequestText::feed(std::string_view text, std::vector<OutputEvent>& out) {
  if (!parser_) {
    content(text, out);
    return;
  }
  std::vector<OutputEvent> pe;
  parser_->feed(text, pe);
  route(pe, out);
}

void RequestText::route(std::vector<OutputEvent>& pe, std::vector<OutputEvent>& out) {
  using K = OutputEvent::Kind;
  for (auto& e : pe) {
    if (stopped()) return;
    switch (e.kind) {
      case K::Content:
        content(e.text, out);
        break;
      case K::ToolCallStart:
      case K::ToolCallArguments:
        if (!opt_.tool_calls) break;  // the call's text comes as content when it completes
        if (e.kind == K::ToolCallStart) release_held(out);
        out.push_back(std::move(e));
        break;
      case K::ToolCall:
      case K::ToolCallsEnd:
        if (!opt_.tool_calls) {
          content(e.raw, out);
          break;
        }
        release_held(out);
        out.push_back(std::move(e));
        break;
      case K::Reasoning:
      case K::ReasoningEnd:
        out.push_back(std::move(e));
        break;
    }
  }
}

void RequestText::content(std::string_view text, std::vector<OutputEvent>& out) {
  std::string s = stops_.feed(text);
  if (s.empty()) return;
  OutputEvent e;
  e.kind = OutputEvent::Kind::Content;
  e.raw = s;
  e.text = std::move(s);
  out.push_back(std::move(e));
}

void RequestText::release_held(std::vector<OutputEvent>& out) {
  if (!stops_.active() || stops_.held() == 0) return;
  std::string s = stops_.flush();
  stops_ = StopMatcher(stop_list_, include_stop_);  // content after the call is watched afresh
  if (s.empty()) return;
  OutputEvent e;
  e.kind = OutputEvent::Kind::Content;
  e.raw = s;
  e.text = std::move(s);
  out.push_back(std::move(e));
}

}  // namespace dsv4
