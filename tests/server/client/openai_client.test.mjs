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
