#!/usr/bin/env node
// Writes tests/tokenizer/data/golden_cases.jsonl: inputs of every kind with the ids HF's own `tokenizers`
// (pinned in package.json) gives them, add_special_tokens=false, V4 added tokens overlaid as the C++ loader
// does. Deterministic for a given tokenizer.json and ../shared directory.
//   cd tests/tokenizer/gen && npm ci && node make_golden.js [tokenizer.json] [shared dir]
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const { loadV4Tokenizer } = require('./hf_tokenizer.js');

const ROOT = path.resolve(__dirname, '../../..');
const TOKENIZER = process.argv[2] || path.join(ROOT, 'assets/tokenizer/tokenizer.json');
const SHARED = process.argv[3] || path.resolve(ROOT, '../shared');
const OUT = path.join(ROOT, 'tests/tokenizer/data/golden_cases.jsonl');

// ---- deterministic randomness
let seed = 0x5eed1234;
function rnd() {  // mulberry32
  seed |= 0; seed = (seed + 0x6D2B79F5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const ri = (n) => Math.floor(rnd() * n);
const pick = (a) => a[ri(a.length)];
const cp = (c) => String.fromCodePoint(c);
const range = (a, b) => cp(a + ri(b - a + 1));

// ---- hand-written samples (our own text)
const ZH = [
  '深度求索公司发布了新的语言模型，它在数学、代码和推理任务上表现出色。',
  '今天天气很好，我们去公园散步吧！你觉得怎么样？',
  '这个函数的时间复杂度是O(n log n)，空间复杂度是O(1)。',
  '请把以下句子翻译成英文：“学而不思则罔，思而不学则殆。”',
  '北京、上海、广州和深圳是中国的四个一线城市；人口都超过一千万。',
  '模型的上下文窗口为一百万个词元，支持思考模式与非思考模式。',
  '《红楼梦》是中国古典四大名著之一，作者是曹雪芹。',
  '数据显示，2025年第三季度的营收同比增长了百分之十二点五。',
];
const JA = [
  '今日はとても良い天気ですね。散歩に行きましょうか？',
  'この関数は配列を受け取り、重複を取り除いた新しい配列を返します。',
  '東京タワーの高さは三百三十三メートルです。',
  '「ありがとうございます」と彼女は言った。',
  'カタカナ語：コンピューター、インターネット、スマートフォン・アプリケーション。',
  'ひらがなとカタカナと漢字を組み合わせて、日本語の文章を書きます。',
  '来週の会議は水曜日の午後二時から始まります（予定）。',
  'ゔぁ゛゜ゝゞヽヾ〆〇ー～・「」『』【】',
];
const CODE = [
  'int main(int argc, char** argv) {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return 0;\n}\n',
  'def fib(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n',
  'const add = (a, b) => a + b;\nexport default function App() {\n\treturn <div className="app">{add(1, 2)}</div>;\n}\n',
  'fn main() {\n    let xs: Vec<u64> = (0..10).map(|i| i * i).collect();\n    println!("{:?}", xs);\n}\n',
  'SELECT id, name, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE u.age >= 18 GROUP BY 1, 2;\n',
  '{"model": "deepseek-v4", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.6, "stream": true}',
  '#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l "$f" | awk \'{print $1}\'\ndone\n',
  '<html>\n  <body>\n    <p class="x">Hello &amp; welcome!</p>\n  </body>\n</html>\n',
  'x = [i**2 for i in range(10) if i % 2 == 0]  # squares\nprint(f"{x!r:>20}")\n',
  'while (*p && *p != \'\\n\') { if (isspace((unsigned char)*p)) ++n; ++p; }\r\n',
];
const EMOJI = ['😀', '😂', '🥲', '❤️', '👍', '👍🏽', '🙏🏿', '🚀', '🇨🇳', '🇯🇵', '🇺🇸', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🧑🏻‍💻',
  '1️⃣', '#️⃣', '©️', '™', '⭐', '🔥', '💯', '🤖', '🦄', '🍣', '☕', '✅', '❌', '⚠️', '🫠', '🪿', '😶‍🌫️', '🏴󠁧󠁢󠁳󠁣󠁴󠁿'];
const WORDS = ('the of and to in is you that it he was for on are as with his they at be this have from or one ' +
  'had by word but not what all were we when your can said there use an each which she do how their if will ' +
  'up other about out many then them these so some her would make like him into time has look two more write ' +
  "go see number no way could people my than first water been call who oil its now find don't I'm we'll " +
  "they've she'd it's can't won't shouldn't y'all O'Neil rock'n'roll").split(' ');
const PUNCT = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~，。！？；：“”‘’（）【】《》、…—·「」『』'.split('');
const WS = [' ', '  ', '\t', '\n', '\r', '\r\n', '\n\n', '\u000b', '\u000c', '\u0085', '\u00a0', '\u1680',
  '\u2000', '\u2001', '\u2002', '\u2003', '\u2004', '\u2005', '\u2006', '\u2007', '\u2008', '\u2009', '\u200a',
  '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\u180e', '\u200b', '\u200c', '\u200d', '\ufeff', '\u00ad'];

const { tok, table } = loadV4Tokenizer(TOKENIZER);
const SPECIALS = [[0, '<｜begin▁of▁sentence｜>'], [1, '<｜end▁of▁sentence｜>'], [2, '<｜▁pad▁｜>'],
  [128000, '<｜place▁holder▁no▁0｜>'], [128799, '<｜place▁holder▁no▁799｜>'], ...table].map((x) => x[1]);

// ---- generators
function words(n) {
  const w = [];
  for (let i = 0; i < n; ++i) {
    let x = pick(WORDS);
    if (rnd() < 0.1) x = x[0].toUpperCase() + x.slice(1);
    w.push(x);
    if (rnd() < 0.12) w.push(pick([',', '.', ';', ':', '!', '?', ' -', ' (x)', '...']));
  }
  return w.join(' ').replace(/ ([,.;:!?])/g, '$1');
}
function number() {
  switch (ri(12)) {
    case 0: return String(ri(10));
    case 1: return String(ri(1e6));
    case 2: return String(Math.floor(rnd() * 1e15)) + String(ri(1e6));
    case 3: return (rnd() * 1000).toFixed(ri(6));
    case 4: return ri(1e6).toLocaleString('en-US');
    case 5: return `${(rnd() * 10).toFixed(3)}e-${ri(30)}`;
    case 6: return `2${ri(10)}${ri(10)}${ri(10)}-${String(1 + ri(12)).padStart(2, '0')}-${String(1 + ri(28)).padStart(2, '0')}`;
    case 7: return `+${ri(99)} (${ri(1000)}) ${ri(1e4)}-${ri(1e4)}`;
    case 8: return Array.from({ length: 1 + ri(8) }, () => cp(0x0660 + ri(10))).join('');  // Arabic-Indic
    case 9: return Array.from({ length: 1 + ri(8) }, () => cp(0xff10 + ri(10))).join('');  // fullwidth
    case 10: return pick(['½', '¾', '²', '³', '¹', 'Ⅻ', 'ⅷ', '①', '⑳', '〇', '𝟘𝟙', '٣', '७', '๓']) + String(ri(100));
    default: return '-' + String(ri(1e9)) + '.' + String(ri(1e4));
  }
}
function hanzi(n) { return Array.from({ length: n }, () => range(0x4e00, 0x9fa5)).join(''); }
function kana(n) { return Array.from({ length: n }, () => (rnd() < 0.5 ? range(0x3041, 0x3096) : range(0x30a1, 0x30fa))).join(''); }
const SCRIPTS = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x5ff], [0x600, 0x6ff],
  [0x900, 0x97f], [0xe00, 0xe7f], [0x1100, 0x11ff], [0x1e00, 0x1eff], [0x2000, 0x206f], [0x2190, 0x23ff],
  [0x2500, 0x27bf], [0x3000, 0x303f], [0x3040, 0x30ff], [0x3400, 0x4dbf], [0x4e00, 0x9fff], [0xac00, 0xd7a3],
  [0xe000, 0xf8ff], [0xfb00, 0xfdff], [0xfe00, 0xfe6f], [0xff00, 0xffef], [0x10000, 0x1007f], [0x1d400, 0x1d7ff],
  [0x1f300, 0x1faff], [0x20000, 0x2a6df], [0xe0000, 0xe007f], [0x0300, 0x036f], [0x1ab0, 0x1aff], [0x0080, 0x009f]];
function unicodeText(n) {
  let s = '';
  for (let i = 0; i < n; ++i) {
    if (rnd() < 0.05) { s += cp(1 + ri(0x10ffff)).replace(/[\ud800-\udfff]/g, ''); continue; }
    const [a, b] = pick(SCRIPTS);
    const c = a + ri(b - a + 1);
    if (c >= 0xd800 && c <= 0xdfff) continue;
    s += cp(c);
    if (rnd() < 0.15) s += pick([' ', '', '\n', '  ']);
  }
  return s;
}
function whitespaceText() {
  const parts = [];
  const n = 1 + ri(12);
  for (let i = 0; i < n; ++i) {
    const k = ri(6);
    if (k < 3) parts.push(Array.from({ length: 1 + ri(5) }, () => pick(WS)).join(''));
    else if (k === 3) parts.push(words(1 + ri(3)));
    else if (k === 4) parts.push(number());
    else parts.push(pick(PUNCT) + pick(['', 'a', 'Z', '中', '1']));
  }
  if (rnd() < 0.3) parts.push(pick(WS).repeat(1 + ri(40)));
  return parts.join('');
}
function specialText() {
  const parts = [];
  const n = 1 + ri(8);
  for (let i = 0; i < n; ++i) {
    const k = ri(7);
    if (k < 3) parts.push(pick(SPECIALS));
    else if (k === 3) { const s = pick(SPECIALS); parts.push(s.slice(0, 1 + ri(s.length - 1))); }  // partial
    else if (k === 4) parts.push(pick(['<｜DSML｜invoke name="get_weather">', '</｜DSML｜parameter>', '\n\n<｜DSML｜tool_calls>\n',
      '<｜/table>｜DSML｜', '｜DSML｜｜DSML｜', '<<think>>', '<|EOT|><|EOT|>', '<｜User｜｜>', '<tool_result>{"a": 1}</tool_result>']));
    else parts.push(k === 5 ? words(1 + ri(6)) : pick(ZH.concat(JA)));
  }
  return parts.join(pick(['', '', ' ', '\n']));
}
function emojiText() {
  const n = 1 + ri(10);
  const p = [];
  for (let i = 0; i < n; ++i) p.push(rnd() < 0.7 ? pick(EMOJI) : words(1 + ri(3)));
  return p.join(pick(['', ' ', '', '\n']));
}
function paragraphs(file) {
  return fs.readFileSync(file, 'utf8').split(/\n\s*\n/).map((s) => s.trim() ? s : null).filter(Boolean);
}

// ---- the cases
const cases = [];
const add = (cat, text) => { if (typeof text === 'string') cases.push({ cat, text }); };

// edge: every ASCII character alone and doubled, common contractions, long runs (exercise the heap path).
add('edge', '');
for (let c = 0; c < 128; ++c) { add('edge', cp(c)); add('edge', cp(c) + cp(c) + 'a' + cp(c)); }
for (const s of [' ', 'a', 'ab', '\n', '\t', ' \n', '1', '中', '😀', '=', '-', '_', '.', '/', 'é']) {
  for (const n of [2, 3, 17, 64, 65, 100, 1000]) add('edge', s.repeat(n));
}
for (const s of ["don't", "DON'T", "I'm", "we're", "it'S", " 's", "'ll", "x'd'z", 'a\u0301', ' \u0301', 'e\u0308\u0323',
  'ﬁ', 'Å', 'Å', 'ǅ', 'ß', 'İ', 'ﬀ', 'https://example.com/a?b=c&d=e#f', 'user@example.org', 'C:\\Program Files\\x',
  '$100.00', '#hashtag', '@mention', '...', '?!', '!!!', '--', '—', '`code`', '**bold**', '<br/>', '&nbsp;'])
  add('edge', s);

// prose and code from the shared spec and tools (English technical text with formulas and tables).
for (const f of ['spec/dsv4-architecture.md', 'spec/dependencies.md', 'spec/anchors.md', 'README.md']) {
  for (const p of paragraphs(path.join(SHARED, f))) add('prose', p.slice(0, 1500));
  const lines = fs.readFileSync(path.join(SHARED, f), 'utf8').split('\n');  // windows of lines, cut anywhere
  for (let i = 0; i < lines.length; i += 9) add('prose', lines.slice(i, i + 1 + ri(6)).join('\n').slice(ri(5)));
}
for (const f of ['tools/dsv4_ref.py', 'tools/make_golden.py', 'tools/make_sparse_ckpt.py']) {
  const lines = fs.readFileSync(path.join(SHARED, f), 'utf8').split('\n');
  for (let i = 0; i < lines.length; i += 12) add('code', lines.slice(i, i + 12 + ri(8)).join('\n'));
}
for (const c of CODE) { add('code', c); add('code', c.replace(/ {2}/g, '\t')); add('code', c.repeat(3)); }
for (let i = 1; i <= 4; ++i) {
  add('chat', fs.readFileSync(path.join(SHARED, `fixtures/encoding/test_output_${i}.txt`), 'utf8'));
  add('chat', fs.readFileSync(path.join(SHARED, `fixtures/encoding/test_input_${i}.json`), 'utf8'));
}
for (let i = 0; i < 250; ++i) add('english', words(3 + ri(80)));
for (let i = 0; i < 250; ++i) add('zh', Array.from({ length: 1 + ri(5) }, () => (rnd() < 0.6 ? pick(ZH) : hanzi(1 + ri(30)) + pick(PUNCT))).join(pick(['', '\n', ' '])));
for (let i = 0; i < 250; ++i) add('ja', Array.from({ length: 1 + ri(5) }, () => (rnd() < 0.6 ? pick(JA) : kana(1 + ri(20)) + hanzi(ri(4)) + pick(PUNCT))).join(pick(['', '\n', ' '])));
for (let i = 0; i < 250; ++i) add('emoji', emojiText());
for (let i = 0; i < 300; ++i) add('numbers', Array.from({ length: 1 + ri(8) }, () => (rnd() < 0.7 ? number() : pick(WORDS))).join(pick([' ', '', ', ', '\n', '+', '.'])));
for (let i = 0; i < 400; ++i) add('whitespace', whitespaceText());
for (let i = 0; i < 350; ++i) add('special', specialText());
for (let i = 0; i < 400; ++i) add('unicode', unicodeText(1 + ri(60)));
for (let i = 0; i < 300; ++i) {
  const gens = [() => words(1 + ri(20)), () => pick(ZH), () => pick(JA), () => pick(CODE), emojiText, number,
    whitespaceText, specialText, () => unicodeText(1 + ri(10))];
  add('mixed', Array.from({ length: 2 + ri(5) }, () => pick(gens)()).join(pick(['', ' ', '\n'])));
}

(async () => {
  const sha = crypto.createHash('sha256').update(fs.readFileSync(TOKENIZER)).digest('hex');
  const out = [JSON.stringify({ generator: 'tests/tokenizer/gen/make_golden.js', tokenizers: require('tokenizers/package.json').version,
    tokenizer_sha256: sha, cases: cases.length, added_tokens: table })];
  let bad = 0;
  for (const c of cases) {
    const enc = await tok.encode(c.text, null, { addSpecialTokens: false });
    const ids = Array.from(enc.getIds());
    const back = await tok.decode(ids, false);
    if (back !== c.text) { ++bad; console.error('HF round trip differs for', JSON.stringify(c.text.slice(0, 80))); }
    out.push(JSON.stringify({ cat: c.cat, text: c.text, ids }));
  }
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, out.join('\n') + '\n');
  const counts = {};
  for (const c of cases) counts[c.cat] = (counts[c.cat] || 0) + 1;
  console.log(`wrote ${cases.length} cases to ${OUT} (${fs.statSync(OUT).size} bytes); HF round-trip mismatches: ${bad}`);
  console.log(JSON.stringify(counts));
})();
