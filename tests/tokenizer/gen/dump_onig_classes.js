#!/usr/bin/env node
// Dumps which code points HF's regex engine (Oniguruma inside npm `tokenizers`) puts in each class the
// DeepSeek pre-tokenizer uses, as ranges: tests/tokenizer/data/onig_unicode_classes.json. The C++ test
// compares PCRE2 (with our additions, src/tokenizer/pre_tokenizer.cpp) against it for every code point.
//   cd tests/tokenizer/gen && npm ci && node dump_onig_classes.js [tokenizer.json]
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const ROOT = path.resolve(__dirname, '../../..');
const base = JSON.parse(fs.readFileSync(process.argv[2] || path.join(ROOT, 'assets/tokenizer/tokenizer.json'), 'utf8'));
base.model.vocab = { a: 0 };
base.model.merges = [];
base.added_tokens = [];
const classes = [['L', '\\p{L}'], ['M', '\\p{M}'], ['N', '\\p{N}'], ['P', '\\p{P}'], ['S', '\\p{S}'], ['s', '\\s']];
const out = { tokenizers: require('tokenizers/package.json').version };
for (const [name, re] of classes) {
  // Split with behavior Removed drops the matched characters; what survives (with code point offsets) is
  // outside the class.
  base.pre_tokenizer = { type: 'Split', pattern: { Regex: re }, behavior: 'Removed', invert: false };
  const pre = Tokenizer.fromString(JSON.stringify(base)).getPreTokenizer();
  const member = new Uint8Array(0x110000);
  for (let start = 0; start < 0x110000; start += 0x8000) {
    const cps = [];
    for (let c = start; c < Math.min(start + 0x8000, 0x110000); ++c) if (c < 0xd800 || c > 0xdfff) cps.push(c);
    for (const c of cps) member[c] = 1;
    for (const [, [a, b]] of pre.preTokenizeString(String.fromCodePoint(...cps)))
      for (let i = a; i < b; ++i) member[cps[i]] = 0;
  }
  const ranges = [];
  for (let c = 0; c < 0x110000;) {
    if (!member[c]) { ++c; continue; }
    let e = c;
    while (e + 1 < 0x110000 && member[e + 1]) ++e;
    ranges.push([c, e]);
    c = e + 1;
  }
  out[name] = ranges;
}
const file = path.join(ROOT, 'tests/tokenizer/data/onig_unicode_classes.json');
fs.writeFileSync(file, JSON.stringify(out) + '\n');
console.log(`wrote ${file}`);
