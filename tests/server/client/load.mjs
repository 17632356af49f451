// Bounded load test for dsv4 serve: TOTAL streaming chat requests, CONCURRENCY at a time, a hard time limit.
// Every request must succeed with exactly MAX_TOKENS tokens; prints (and writes to OUT, if set) the TTFT
// percentiles and throughput. Plain fetch, no dependencies.
//   DSV4_URL=http://127.0.0.1:8000 node load.mjs [TOTAL=200] [CONCURRENCY=16] [MAX_TOKENS=16] [LIMIT_S=180]
import { writeFileSync } from 'node:fs';

const [total, concurrency, maxTokens, limitS] = [200, 16, 16, 180].map((d, i) => Number(process.argv[2 + i] ?? d));
const url = `${process.env.DSV4_URL}/v1/chat/completions`;
const deadline = Date.now() + limitS * 1000;
const topics = ['colors', 'rivers', 'prime numbers', 'birds', 'compilers', 'tea', 'bridges', 'volcanoes'];

async function one(i) {
  const t0 = performance.now();
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      model: 'dsv4-tiny', stream: true, stream_options: { include_usage: true }, max_tokens: maxTokens, ignore_eos: true,
      temperature: 1.0, seed: i, messages: [{ role: 'user', content: `Request ${i}: tell me about ${topics[i % topics.length]}.` }],
    }),
    signal: AbortSignal.timeout(Math.max(1, deadline - Date.now())),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let buf = '', ttft = null, text = '', usage = null, done = false;
  const dec = new TextDecoder();
  for await (const part of res.body) {
    buf += dec.decode(part, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 2);
      if (!line.startsWith('data: ')) continue;
      if (line === 'data: [DONE]') { done = true; continue; }
      const j = JSON.parse(line.slice(6));
      if (j.usage) usage = j.usage;
      const d = j.choices[0]?.delta ?? {};
      const piece = (d.content ?? '') + (d.reasoning_content ?? '');
      if (piece && ttft === null) ttft = performance.now() - t0;
      text += piece;
    }
  }
  if (!done) throw new Error('stream ended without [DONE]');
  if (!usage || usage.completion_tokens !== maxTokens) throw new Error(`usage ${JSON.stringify(usage)}`);
  if (ttft === null || !text) throw new Error('no content');
  return { ttft, e2e: performance.now() - t0, tokens: usage.completion_tokens };
}

const results = [], failures = [];
let next = 0;
const t0 = performance.now();
await Promise.all(Array.from({ length: concurrency }, async () => {
  while (next < total) {
    const i = next++;
    try { results.push(await one(i)); } catch (e) { failures.push(`#${i}: ${e.message}`); }
  }
}));
const wall = (performance.now() - t0) / 1000;
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))]; };
const ttfts = results.map((r) => r.ttft), e2es = results.map((r) => r.e2e);
const tokens = results.reduce((a, r) => a + r.tokens, 0);
const summary = {
  requests: total, failed: failures.length, concurrency, max_tokens: maxTokens, wall_s: +wall.toFixed(2),
  requests_per_s: +(results.length / wall).toFixed(2), generated_tokens_per_s: +(tokens / wall).toFixed(1),
  ttft_ms: { p50: +pct(ttfts, 50).toFixed(1), p90: +pct(ttfts, 90).toFixed(1), p99: +pct(ttfts, 99).toFixed(1) },
  e2e_ms: { p50: +pct(e2es, 50).toFixed(1), p99: +pct(e2es, 99).toFixed(1) },
};
console.log(JSON.stringify(summary));
if (process.env.OUT) writeFileSync(process.env.OUT, JSON.stringify(summary, null, 2) + '\n');
if (failures.length) { console.error(failures.slice(0, 10).join('\n')); process.exit(1); }
