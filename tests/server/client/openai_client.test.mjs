// dsv4 serve driven by the official OpenAI SDK (openai 6.49.0). DSV4_URL: the demo model (random weights,
// so outputs are checked for shape and consistency); DSV4_SCRIPTED_URL: a server replaying scripted.json,
// for what a random model never says (tool calls, reasoning then an answer).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

const demo = new OpenAI({ baseURL: `${process.env.DSV4_URL}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
const scripted = new OpenAI({ baseURL: `${process.env.DSV4_SCRIPTED_URL}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
const model = 'dsv4-tiny';
const user = (content) => [{ role: 'user', content }];
const weatherTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather forecast for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
  },
};

test('models.list names the served model', async () => {
  const ids = [];
  for await (const m of demo.models.list()) ids.push(m.id);
  assert.deepEqual(ids, [model]);
});

test('chat: non-streaming and streaming agree, usage is reported', async () => {
  const req = { model, messages: user('Name three colors.'), max_tokens: 6, temperature: 0 };
  const r = await demo.chat.completions.create(req);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(r.choices[0].message.content.length > 0);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 6);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 6);
  assert.equal(typeof r.usage.prompt_tokens_details.cached_tokens, 'number');

  const stream = await demo.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      finish = c.finish_reason ?? finish;
    }
  }
  assert.equal(text, r.choices[0].message.content);
  assert.equal(finish, 'length');
  assert.deepEqual(usage.completion_tokens, 6);

  // The SDK's own stream accumulator gets the same message.
  const final = await demo.chat.completions.stream(req).finalChatCompletion();
  assert.equal(final.choices[0].message.content, r.choices[0].message.content);
});

test('chat: reasoning on and off (chat_template_kwargs)', async () => {
  const on = await demo.chat.completions.create({
    model, messages: user('Why is the sky blue?'), max_tokens: 6, temperature: 0, chat_template_kwargs: { thinking: true },
  });
  assert.ok(on.choices[0].message.reasoning_content.length > 0);
  const off = await demo.chat.completions.create({
    model, messages: user('Why is the sky blue?'), max_tokens: 6, temperature: 0, chat_template_kwargs: { thinking: false },
  });
  assert.equal(off.choices[0].message.reasoning_content, null);
  assert.ok(off.choices[0].message.content.length > 0);
});

test('chat: logprobs', async () => {
  const r = await demo.chat.completions.create({
    model, messages: user('Hello'), max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 2,
  });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, 4);
  for (const e of lp) {
    assert.ok(e.logprob <= 0);
    assert.equal(e.top_logprobs.length, 2);
    assert.ok(e.top_logprobs[0].logprob >= e.logprob - 1e-6, 'greedy picks the top token');
  }
  assert.equal(Buffer.from(lp.flatMap((e) => e.bytes)).toString('utf8'), r.choices[0].message.content);
});

test('completions: text, streaming, n', async () => {
  const r = await demo.completions.create({ model, prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.ok(r.choices[0].text.length > 0);
  assert.equal(r.usage.completion_tokens, 5);
  let text = '';
  for await (const chunk of await demo.completions.create({ model, prompt: 'Once upon a time', max_tokens: 5, temperature: 0, stream: true }))
    text += chunk.choices[0]?.text ?? '';
  assert.equal(text, r.choices[0].text);
  const n = await demo.completions.create({ model, prompt: 'x', max_tokens: 3, n: 3, seed: 1 });
  assert.deepEqual(n.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(n.usage.completion_tokens, 9);
});

test('tool-call round trip on the real model: assistant tool_calls -> tool message -> answer', async () => {
  const first = await demo.chat.completions.create({ model, messages: user('Weather in Paris?'), tools: [weatherTool], max_tokens: 4 });
  assert.ok(['stop', 'length', 'tool_calls'].includes(first.choices[0].finish_reason));
  const answer = await demo.chat.completions.create({
    model, tools: [weatherTool], max_tokens: 4, temperature: 0,
    messages: [
      ...user('Weather in Paris?'),
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: 'sunny, 21 C' },
    ],
  });
  assert.equal(typeof answer.choices[0].message.content, 'string');
  assert.ok(answer.usage.prompt_tokens > first.usage.prompt_tokens, 'the call and its result are in the prompt');
});

test('errors map to the SDK error classes', async () => {
  await assert.rejects(demo.chat.completions.create({ model: 'gpt-4o', messages: user('x') }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found');
  await assert.rejects(demo.chat.completions.create({ model, messages: user('x'), temperature: -1 }),
    (e) => e instanceof OpenAI.BadRequestError && /temperature/.test(e.message));
  await assert.rejects(demo.chat.completions.create({ model, messages: user('word '.repeat(70000)) }),
    (e) => e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded');
});

test('scripted: tool calls parsed out of DSML, non-streaming and streaming', async () => {
  const req = { model, messages: user('Weather in Paris and Tokyo?'), tools: [weatherTool] };
  const r = await scripted.chat.completions.create(req);
  const msg = r.choices[0].message;
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(msg.content, 'Let me look that up.');
  assert.equal(msg.tool_calls.length, 2);
  assert.deepEqual(msg.tool_calls.map((t) => [t.type, t.function.name, JSON.parse(t.function.arguments)]),
    [['function', 'get_weather', { city: 'Paris', days: 2 }], ['function', 'get_weather', { city: 'Tokyo', days: 1 }]]);
  assert.notEqual(msg.tool_calls[0].id, msg.tool_calls[1].id);

  // Streamed deltas accumulated by the SDK, and by hand.
  const final = await scripted.chat.completions.stream(req).finalChatCompletion();
  assert.equal(final.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(final.choices[0].message.tool_calls.map((t) => JSON.parse(t.function.arguments)), [{ city: 'Paris', days: 2 }, { city: 'Tokyo', days: 1 }]);
  const calls = [];
  for await (const chunk of await scripted.chat.completions.create({ ...req, stream: true }))
    for (const tc of chunk.choices[0]?.delta.tool_calls ?? []) {
      calls[tc.index] ??= { name: '', args: '' };
      calls[tc.index].name += tc.function?.name ?? '';
      calls[tc.index].args += tc.function?.arguments ?? '';
    }
  assert.deepEqual(calls.map((c) => [c.name, JSON.parse(c.args)]), [['get_weather', { city: 'Paris', days: 2 }], ['get_weather', { city: 'Tokyo', days: 1 }]]);
});

test('scripted: tool round trip with the SDK tool runner', async () => {
  const seen = [];
  const runner = scripted.chat.completions.runTools({
    model,
    messages: user('Weather in Paris and Tokyo?'),
    tools: [{
      type: 'function',
      function: {
        name: 'get_weather', description: 'Weather forecast for a city', parameters: weatherTool.function.parameters,
        parse: JSON.parse, function: async ({ city, days }) => { seen.push(city); return `${city}: fine for ${days} days`; },
      },
    }],
  });
  assert.equal(await runner.finalContent(), 'It is sunny in Paris (21 C) and rainy in Tokyo (17 C).');
  assert.deepEqual(seen, ['Paris', 'Tokyo']);
  const msgs = runner.messages;
  assert.equal(msgs.filter((m) => m.role === 'tool').length, 2);
});

test('scripted: reasoning then content, streamed as reasoning_content deltas', async () => {
  const req = { model, messages: user('Hi'), chat_template_kwargs: { thinking: true } };
  const r = await scripted.chat.completions.create(req);
  assert.equal(r.choices[0].message.reasoning_content, 'The user greets me; answer kindly.');
  assert.equal(r.choices[0].message.content, 'Hello! How can I help?');
  let reasoning = '', content = '', order = [];
  for await (const chunk of await scripted.chat.completions.create({ ...req, stream: true })) {
    const d = chunk.choices[0]?.delta ?? {};
    if (d.reasoning_content) { reasoning += d.reasoning_content; if (order.at(-1) !== 'r') order.push('r'); }
    if (d.content) { content += d.content; if (order.at(-1) !== 'c') order.push('c'); }
  }
  assert.equal(reasoning, r.choices[0].message.reasoning_content);
  assert.equal(content, r.choices[0].message.content);
  assert.deepEqual(order, ['r', 'c']);
  const plain = await scripted.chat.completions.create({ model, messages: user('Hi'), chat_template_kwargs: { thinking: false } });
  assert.equal(plain.choices[0].message.reasoning_content, null);
  assert.equal(plain.choices[0].message.content, 'Hello! How can I help?');
});

// ---- Responses API (POST /v1/responses)
const weatherFn = { type: 'function', name: 'get_weather', description: 'Weather forecast for a city', parameters: weatherTool.function.parameters };

test('responses: create, text output, usage, retrieve, delete', async () => {
  const r = await scripted.responses.create({ model, input: 'Say hello', instructions: 'Be brief.', max_output_tokens: 64 });
  assert.equal(r.object, 'response');
  assert.equal(r.status, 'completed');
  assert.equal(r.output_text, 'Hello! How can I help?');
  assert.equal(r.output[0].type, 'message');
  assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens);
  assert.equal(r.usage.output_tokens_details.reasoning_tokens, 0);
  assert.equal(typeof r.usage.input_tokens_details.cached_tokens, 'number');
  const got = await scripted.responses.retrieve(r.id);
  assert.equal(got.id, r.id);
  assert.equal(got.output[0].content[0].text, r.output_text);
  await scripted.responses.delete(r.id);
  await assert.rejects(scripted.responses.retrieve(r.id), (e) => e instanceof OpenAI.NotFoundError);
});

test('responses: stream events accumulate to the same response', async () => {
  const types = [];
  const stream = scripted.responses.stream({ model, input: 'Hi', reasoning: { effort: 'high' } });
  let text = '', summary = '';
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'response.output_text.delta') text += ev.delta;
    if (ev.type === 'response.reasoning_summary_text.delta') summary += ev.delta;
  }
  const final = await stream.finalResponse();
  assert.equal(types[0], 'response.created');
  assert.equal(types[1], 'response.in_progress');
  assert.equal(types.at(-1), 'response.completed');
  for (const t of ['response.output_item.added', 'response.reasoning_summary_part.added', 'response.reasoning_summary_text.done',
    'response.content_part.added', 'response.output_text.done', 'response.content_part.done', 'response.output_item.done'])
    assert.ok(types.includes(t), t);
  assert.equal(summary, 'The user greets me; answer kindly.', 'reasoning.effort turns thinking on');
  assert.equal(text, 'Hello! How can I help?');
  assert.deepEqual(final.output.map((o) => o.type), ['reasoning', 'message']);
  assert.equal(final.output_text, text);
  assert.ok(final.usage.output_tokens_details.reasoning_tokens > 0);
});

test('responses: function calls, streamed arguments, and the tool round trip', async () => {
  const req = { model, input: [{ role: 'user', content: [{ type: 'input_text', text: 'Weather in Paris and Tokyo?' }] }], tools: [weatherFn, { type: 'web_search' }] };
  const r = await scripted.responses.create(req);
  const calls = r.output.filter((o) => o.type === 'function_call');
  assert.deepEqual(calls.map((c) => [c.name, JSON.parse(c.arguments)]), [['get_weather', { city: 'Paris', days: 2 }], ['get_weather', { city: 'Tokyo', days: 1 }]]);
  assert.ok(calls.every((c) => c.call_id.startsWith('call_') && c.status === 'completed'));
  let args = '';
  const stream = scripted.responses.stream(req);
  for await (const ev of stream) if (ev.type === 'response.function_call_arguments.delta') args += ev.delta;
  const streamed = (await stream.finalResponse()).output.filter((o) => o.type === 'function_call');
  assert.equal(args, streamed.map((c) => c.arguments).join(''));
  assert.deepEqual(streamed.map((c) => JSON.parse(c.arguments)), [{ city: 'Paris', days: 2 }, { city: 'Tokyo', days: 1 }]);
  // Round trip, stateless (store: false): the client sends the calls and their outputs back.
  const back = await scripted.responses.create({
    model, store: false, tools: [weatherFn],
    input: [...req.input, ...calls.map(({ type, call_id, name, arguments: a }) => ({ type, call_id, name, arguments: a })),
      ...calls.map((c) => ({ type: 'function_call_output', call_id: c.call_id, output: 'fine' }))],
  });
  assert.equal(back.output_text, 'It is sunny in Paris (21 C) and rainy in Tokyo (17 C).');
  await assert.rejects(scripted.responses.retrieve(back.id), (e) => e instanceof OpenAI.NotFoundError, 'store: false keeps nothing');
  const single = await scripted.responses.create({ ...req, parallel_tool_calls: false });
  assert.equal(single.output.filter((o) => o.type === 'function_call').length, 1);
});

test('responses: previous_response_id continues a stored conversation', async () => {
  const first = await scripted.responses.create({ model, input: 'My name is Zed. zqx-remember' });
  assert.equal(first.output_text, 'Noted: zqx-ack-51.');
  const second = await scripted.responses.create({ model, input: 'Who am I?', previous_response_id: first.id });
  assert.equal(second.output_text, 'You are Zed.');
  assert.equal(second.previous_response_id, first.id);
  const s = scripted.responses.stream({ model, input: 'Who am I?', previous_response_id: first.id });
  assert.equal((await s.finalResponse()).output_text, 'You are Zed.');
  const alone = await scripted.responses.create({ model, input: 'Who am I?' });
  assert.notEqual(alone.output_text, 'You are Zed.', 'without it the server remembers nothing');
  await assert.rejects(scripted.responses.create({ model, input: 'x', previous_response_id: 'resp_nope' }),
    (e) => e instanceof OpenAI.NotFoundError && /resp_nope/.test(e.message));
  await assert.rejects(scripted.responses.create({ model, input: [{ type: 'bogus' }] }),
    (e) => e instanceof OpenAI.BadRequestError && /input\[0\]\.type/.test(e.message));
});
