#include "tokenizer/dsml_parser.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/python_json.h"

namespace dsv4 {

namespace {

constexpr std::string_view kThinkEnd = "</think>";
constexpr std::string_view kBlockStart = "\n\n<｜DSML｜tool_calls";
constexpr std::string_view kOpenInvoke = ">\n<｜DSML｜invoke";
constexpr std::string_view kOpenEnd = ">\n</｜DSML｜tool_calls>";
constexpr std::string_view kInvoke = "<｜DSML｜invoke";
constexpr std::string_view kInvokeEnd = "</｜DSML｜invoke";
constexpr std::string_view kBlockEnd = "</｜DSML｜tool_calls>";
constexpr std::string_view kParam = "<｜DSML｜parameter";
constexpr std::string_view kParamEnd = "/｜DSML｜parameter";
constexpr std::string_view kNextParam = ">\n<｜DSML｜parameter";
constexpr std::string_view kCloseInvoke = ">\n</｜DSML｜invoke";
constexpr std::string_view kLineEnd = ">\n";
constexpr std::string_view kValueEnd = "</｜DSML｜parameter";
constexpr size_t kMaxHeader = 1024;  // an invoke header longer than this is not one

// Length of the longest prefix of `s` that does not end inside a UTF-8 sequence (previews send whole
// characters only, so a value escaped in pieces equals the value escaped at once).
size_t whole_utf8(std::string_view s) {
  size_t n = s.size(), back = 0;
  while (back < 4 && back < n && (static_cast<unsigned char>(s[n - 1 - back]) & 0xC0) == 0x80) ++back;
  if (back == n) return n;
  const unsigned char lead = static_cast<unsigned char>(s[n - 1 - back]);
  const size_t len = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 1;
  return back + 1 < len ? n - 1 - back : n;
}

// Longest proper prefix of `marker` that `s` ends with: text that must wait for the next piece.
size_t holdback(std::string_view s, std::string_view marker) {
  for (size_t h = std::min(s.size(), marker.size() - 1); h > 0; --h)
    if (s.substr(s.size() - h) == marker.substr(0, h)) return h;
  return 0;
}

// Which alternative `rest` starts with: its index, -1 if more input could still make one match, -2 if none can.
int expect(std::string_view rest, std::initializer_list<std::string_view> alts) {
  bool possible = false;
  int i = 0;
  for (std::string_view a : alts) {
    if (rest.size() >= a.size() && rest.substr(0, a.size()) == a) return i;
    if (rest.size() < a.size() && a.substr(0, rest.size()) == rest) possible = true;
    ++i;
  }
  return possible ? -1 : -2;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Could `s` still grow into something starting with `prefix`?
bool compatible(std::string_view s, std::string_view prefix) {
  const size_t n = std::min(s.size(), prefix.size());
  return s.substr(0, n) == prefix.substr(0, n);
}

// The reference's `^\s*name="(.*?)">\n$` (Python's `$` also allows one more trailing newline).
bool parse_invoke_header(std::string_view h, std::string& name) {
  size_t i = 0;
  while (i < h.size() && is_space(h[i])) ++i;
  h.remove_prefix(i);
  if (h.substr(0, 6) != "name=\"") return false;
  h.remove_prefix(6);
  for (std::string_view tail : {std::string_view("\">\n"), std::string_view("\">\n\n")}) {
    if (h.size() >= tail.size() && h.substr(h.size() - tail.size()) == tail) {
      name = std::string(h.substr(0, h.size() - tail.size()));
      return true;
    }
  }
  return false;
}

// The reference's `^ name="(.*?)" string="(true|false)">(.*?)<$`.
bool parse_param(std::string_view p, std::string& name, bool& is_string, std::string& value) {
  if (p.substr(0, 7) != " name=\"" || p.empty() || p.back() != '<') return false;
  p.remove_prefix(7);
  const size_t t = p.find("\" string=\"true\">"), f = p.find("\" string=\"false\">");
  if (t == std::string_view::npos && f == std::string_view::npos) return false;
  is_string = t != std::string_view::npos && (f == std::string_view::npos || t < f);
  const size_t at = is_string ? t : f;
  const size_t start = at + (is_string ? 16 : 17);
  if (start > p.size() - 1) return false;
  name = std::string(p.substr(0, at));
  value = std::string(p.substr(start, p.size() - 1 - start));
  return true;
}

}  // namespace

StreamingOutputParser::StreamingOutputParser(ThinkingMode mode, uint64_t id_seed)
    : state_(mode == ThinkingMode::Thinking ? State::Reasoning : State::Content),
      rng_(id_seed ? id_seed : std::random_device{}()) {}

std::string StreamingOutputParser::new_call_id() {
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += kAlphabet[rng_() % 62];
  return id;
}

void StreamingOutputParser::emit_text(OutputEvent::Kind kind, size_t n, std::vector<OutputEvent>& events) {
  if (n == 0) return;
  OutputEvent e;
  e.kind = kind;
  e.text = buf_.substr(0, n);
  e.raw = e.text;
  events.push_back(std::move(e));
  buf_.erase(0, n);
}

void StreamingOutputParser::malformed(std::vector<OutputEvent>& events) {
  summary_.tool_call_malformed = true;
  state_ = State::Passthrough;
  cur_ = 0;
  emit_text(OutputEvent::Kind::Content, buf_.size(), events);
}

bool StreamingOutputParser::step_block(std::vector<OutputEvent>& events) {
  const std::string_view rest = std::string_view(buf_).substr(cur_);
  auto advance_to = [&](Block next, size_t n) {
    cur_ += n;
    block_ = next;
    return true;
  };
  switch (block_) {
    case Block::Open:
    case Block::Next: {
      const int r = block_ == Block::Open ? expect(rest, {kOpenInvoke, kOpenEnd}) : expect(rest, {kInvoke, kBlockEnd});
      if (r == -1) return false;
      if (r == -2) {
        malformed(events);
        return false;
      }
      const size_t n = block_ == Block::Open ? (r == 0 ? kOpenInvoke : kOpenEnd).size() : (r == 0 ? kInvoke : kBlockEnd).size();
      if (r == 0) {
        call_ = ParsedToolCall{};
        call_.arguments.push_back('{');
        param_names_.clear();
        return advance_to(Block::Header, n);
      }
      OutputEvent e;  // the block is closed
      e.kind = OutputEvent::Kind::ToolCallsEnd;
      e.raw = buf_.substr(0, cur_ + n);
      events.push_back(std::move(e));
      buf_.erase(0, cur_ + n);
      cur_ = 0;
      block_ = Block::Open;
      state_ = State::Content;
      return true;
    }
    case Block::Header: {
      const size_t p = rest.find(kParam), q = rest.find(kInvokeEnd);
      if (p == std::string_view::npos && q == std::string_view::npos) {
        size_t i = 0;
        while (i < rest.size() && is_space(rest[i])) ++i;
        if (!compatible(rest.substr(i), "name=\"") || rest.size() > kMaxHeader) malformed(events);
        return false;
      }
      const bool param = p < q;
      if (!parse_invoke_header(rest.substr(0, param ? p : q), call_.name)) {
        malformed(events);
        return false;
      }
      call_.name = utf8_lossy(call_.name);
      call_.id = new_call_id();
      previewed_ = 0;
      {
        OutputEvent e;
        e.kind = OutputEvent::Kind::ToolCallStart;
        e.call = call_;
        e.call.arguments.clear();
        events.push_back(std::move(e));
      }
      return param ? advance_to(Block::Param, p + kParam.size()) : advance_to(Block::InvokeClose, q + kInvokeEnd.size());
    }
    case Block::Param: {
      const size_t p = rest.find(kParamEnd);
      if (p == std::string_view::npos) {
        if (!compatible(rest, " name=\"")) malformed(events);
        else preview_param(rest, events);
        return false;
      }
      std::string name, value;
      bool is_string = false;
      if (!parse_param(rest.substr(0, p), name, is_string, value) ||
          std::find(param_names_.begin(), param_names_.end(), name) != param_names_.end()) {
        malformed(events);
        return false;
      }
      param_names_.push_back(name);
      // Arguments must be valid JSON, so bytes that are not UTF-8 (only if the caller fed such) become U+FFFD.
      if (param_names_.size() > 1) call_.arguments += ", ";
      python_json_string(utf8_lossy(name), call_.arguments);
      call_.arguments += ": ";
      if (is_string || !nlohmann::json::accept(value)) python_json_string(utf8_lossy(value), call_.arguments);
      else call_.arguments += value;
      preview_send(call_.arguments, events);
      return advance_to(Block::AfterParam, p + kParamEnd.size());
    }
    case Block::AfterParam: {
      const int r = expect(rest, {kNextParam, kCloseInvoke});
      if (r == -1) return false;
      if (r == -2) {
        malformed(events);
        return false;
      }
      return r == 0 ? advance_to(Block::Param, kNextParam.size()) : advance_to(Block::InvokeClose, kCloseInvoke.size());
    }
    case Block::InvokeClose: {
      const int r = expect(rest, {kLineEnd});
      if (r == -1) return false;
      if (r == -2) {
        malformed(events);
        return false;
      }
      OutputEvent e;
      e.kind = OutputEvent::Kind::ToolCall;
      call_.arguments += '}';
      preview_send(call_.arguments, events);
      e.call = std::move(call_);
      e.raw = buf_.substr(0, cur_ + kLineEnd.size());
      events.push_back(std::move(e));
      buf_.erase(0, cur_ + kLineEnd.size());
      cur_ = 0;
      ++summary_.tool_calls;
      block_ = Block::Next;
      return true;
    }
  }
  return false;
}

void StreamingOutputParser::preview_send(const std::string& upto, std::vector<OutputEvent>& events) {
  if (upto.size() <= previewed_) return;
  OutputEvent e;
  e.kind = OutputEvent::Kind::ToolCallArguments;
  e.text = upto.substr(previewed_);
  previewed_ = upto.size();
  events.push_back(std::move(e));
}

// The current parameter's value so far, for a string parameter: the arguments as they will read once it
// closes, minus the closing quote and whatever could still be the start of `</｜DSML｜parameter`.
void StreamingOutputParser::preview_param(std::string_view rest, std::vector<OutputEvent>& events) {
  const size_t t = rest.find("\" string=\"true\">"), f = rest.find("\" string=\"false\">");
  if (t == std::string_view::npos || (f != std::string_view::npos && f < t)) return;  // not (yet) a string value
  if (rest.substr(0, 7) != " name=\"") return;
  const std::string name(rest.substr(7, t - 7));
  if (std::find(param_names_.begin(), param_names_.end(), name) != param_names_.end()) return;  // will be malformed
  std::string_view value = rest.substr(t + 16);
  value = value.substr(0, value.size() - holdback(value, kValueEnd));
  value = value.substr(0, whole_utf8(value));
  std::string upto = call_.arguments;
  if (!param_names_.empty()) upto += ", ";
  python_json_string(utf8_lossy(name), upto);
  upto += ": ";
  python_json_string(utf8_lossy(value), upto);
  upto.pop_back();  // the closing quote comes when the value is complete
  preview_send(upto, events);
}

void StreamingOutputParser::process(std::vector<OutputEvent>& events) {
  for (;;) {
    switch (state_) {
      case State::Passthrough:
        emit_text(OutputEvent::Kind::Content, buf_.size(), events);
        return;
      case State::Reasoning: {
        const size_t p = buf_.find(kThinkEnd);
        if (p == std::string::npos) {
          emit_text(OutputEvent::Kind::Reasoning, buf_.size() - holdback(buf_, kThinkEnd), events);
          return;
        }
        emit_text(OutputEvent::Kind::Reasoning, p, events);
        OutputEvent e;
        e.kind = OutputEvent::Kind::ReasoningEnd;
        e.raw = std::string(kThinkEnd);
        events.push_back(std::move(e));
        buf_.erase(0, kThinkEnd.size());
        summary_.reasoning_ended = true;
        state_ = State::Content;
        break;
      }
      case State::Content: {
        const size_t p = buf_.find(kBlockStart);
        if (p == std::string::npos) {
          emit_text(OutputEvent::Kind::Content, buf_.size() - holdback(buf_, kBlockStart), events);
          return;
        }
        emit_text(OutputEvent::Kind::Content, p, events);
        state_ = State::Block;
        block_ = Block::Open;
        cur_ = kBlockStart.size();
        break;
      }
      case State::Block:
        if (!step_block(events)) {
          if (state_ == State::Passthrough) break;  // malformed: the rest is content
          return;
        }
        break;
    }
  }
}

void StreamingOutputParser::feed(std::string_view text, std::vector<OutputEvent>& events) {
  buf_.append(text);
  process(events);
}

void StreamingOutputParser::finish(std::vector<OutputEvent>& events) {
  process(events);
  if (state_ == State::Block) summary_.tool_call_truncated = true;
  emit_text(state_ == State::Reasoning ? OutputEvent::Kind::Reasoning : OutputEvent::Kind::Content, buf_.size(),
            events);
  cur_ = 0;
  state_ = State::Passthrough;  // anything fed after the end is content
}

ParsedOutput parse_output(std::string_view text, ThinkingMode mode, uint64_t id_seed) {
  StreamingOutputParser parser(mode, id_seed);
  std::vector<OutputEvent> events;
  parser.feed(text, events);
  parser.finish(events);
  ParsedOutput out;
  for (auto& e : events) {
    switch (e.kind) {
      case OutputEvent::Kind::Reasoning: out.reasoning += e.text; break;
      case OutputEvent::Kind::Content: out.content += e.text; break;
      case OutputEvent::Kind::ToolCall: out.tool_calls.push_back(std::move(e.call)); break;
      default: break;
    }
  }
  out.summary = parser.summary();
  return out;
}

}  // namespace dsv4
