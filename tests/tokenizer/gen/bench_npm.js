#!/usr/bin/env node
// The npm side of bench/tokenizer_bench.cpp: HF `tokenizers` on the same corpus file, cut into the same ~4 KB
// documents. Prints one JSON object (MB/s, token count). Run by the C++ benchmark; usable alone:
//   node bench_npm.js CORPUS TOKENIZER_JSON
'use strict';
const fs = require('fs');
const { loadV4Tokenizer } = require('./hf_tokenizer.js');

function documents(buf) {  // same cut as the C++ side: >= 4096 bytes, then up to and including the next '\n'
  const docs = [];
  let pos = 0;
  while (pos < buf.length) {
    let end = Math.min(buf.length, pos + 4096);
    const nl = buf.indexOf(10, end);
    end = nl < 0 ? buf.length : nl + 1;
    docs.push(buf.subarray(pos, end).toString('utf8'));
    pos = end;
  }
  return docs;
}

(async () => {
  const [corpusFile, tokFile] = process.argv.slice(2);
  const buf = fs.readFileSync(corpusFile);
  const docs = documents(buf);
  const { tok } = loadV4Tokenizer(tokFile);
  const mb = buf.length / 1e6;
  const opts = { addSpecialTokens: false };
  let best = Infinity, tokens = 0;
  const ids = [];
  for (let pass = 0; pass < 3; ++pass) {
    const t0 = process.hrtime.bigint();
    tokens = 0;
    for (let d = 0; d < docs.length; ++d) {
      const e = await tok.encode(docs[d], null, opts);
      ids[d] = e.getIds();
      tokens += ids[d].length;
    }
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  let bestBatch = Infinity;
  for (let pass = 0; pass < 3; ++pass) {
    const t0 = process.hrtime.bigint();
    await tok.encodeBatch(docs, opts);
    bestBatch = Math.min(bestBatch, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  let bestDec = Infinity;
  for (let pass = 0; pass < 2; ++pass) {
    const t0 = process.hrtime.bigint();
    for (const v of ids) await tok.decode(Array.from(v), false);
    bestDec = Math.min(bestDec, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  console.log(JSON.stringify({
    version: require('tokenizers/package.json').version, docs: docs.length, tokens,
    encode_mbps: mb / best, batch_mbps: mb / bestBatch, decode_mbps: mb / bestDec,
  }));
})().catch((e) => { console.error(e); process.exit(1); });
