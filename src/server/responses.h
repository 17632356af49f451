// OpenAI Responses API (POST /v1/responses): the request turned into a chat request the rest of the server
// already renders (responses_input.cpp), and the handlers that shape output items and events
// (responses_api.cpp).
//
// Tools: `function` tools are offered to the model; `namespace` groups are flattened into their functions
// (a call to one reports its namespace). Hosted tools the server cannot run (web_search, file_search,
// code_interpreter, computer use, image generation, MCP, ...) are dropped, and the response carries an
// `x-dsv4-warning` header naming them: agents such as Codex always send web_search, and refusing would make
// them unusable, while offering it would make the model call a tool nobody runs.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "server/api_error.h"
#include "server/chat_prompt.h"

namespace dsv4::server {

class ResponseStore;

struct ResponsesRequest {
  Json chat;            // an OpenAI chat body: messages, tools, tool_choice, response_format, reasoning_effort
  Json conversation;    // the messages to store for previous_response_id (chat["messages"] minus instructions)
  std::vector<std::string> dropped_tools;        // hosted tools left out (types)
  std::map<std::string, std::string> namespace_of;  // flattened function name -> its namespace
  bool parallel_tool_calls = true;
  bool reasoning_in_encrypted_content = false;  // include: ["reasoning.encrypted_content"]
};

// Validates and converts; errors are 400s naming the field (input[3].call_id, tools[2].name, ...), an
// unknown or evicted previous_response_id is a 404.
ResponsesRequest responses_to_chat(const Json& body, const ResponseStore& store);

}  // namespace dsv4::server
