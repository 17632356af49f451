// Loads the base tokenizer.json with HF's own `tokenizers` binding and applies the same V4 added-token overlay
// as the C++ loader (src/tokenizer/added_tokens.cpp): V4's tokens from id 128815 up, added as special,
// non-normalized tokens in id order so that HF assigns them exactly those ids.
'use strict';
const { Tokenizer, AddedToken } = require('tokenizers');

function v4AddedTokensFrom128800() {
  const low = [
    '<｜fim▁hole｜>', '<｜fim▁begin｜>', '<｜fim▁end｜>', '<｜User｜>', '<｜Assistant｜>', '<|EOT|>',
    '<｜tool▁calls▁begin｜>', '<｜tool▁calls▁end｜>', '<｜tool▁call▁begin｜>', '<｜tool▁call▁end｜>',
    '<｜tool▁outputs▁begin｜>', '<｜tool▁outputs▁end｜>', '<｜tool▁output▁begin｜>', '<｜tool▁output▁end｜>',
    '<｜tool▁sep｜>',
    '<｜begin▁of▁repo▁name｜>', '<｜end▁of▁repo▁name｜>', '<｜begin▁of▁file▁name｜>', '<｜end▁of▁file▁name｜>',
    '<｜begin▁of▁file｜>', '<｜end▁of▁file｜>', '<think>', '</think>', '<｜place▁holder▁for▁copy｜>',
    '<｜place▁holder▁for▁pointer▁replace｜>', '｜DSML｜', '<｜begin▁sys｜>', '<｜end▁sys｜>',
    '<｜latest_reminder｜>', '<｜action｜>', '<｜query｜>', '<｜authority｜>', '<｜domain｜>', '<｜task｜>',
    '<｜political｜>', '<｜entity｜>', '<｜title｜>', '<｜safety｜>', '<｜answer｜>', '<｜search｜>', '<dsml:',
    '</dsml:', '<｜search▁begin｜>', '<｜search▁end｜>', '<｜extracted_url｜>', '<｜read_url｜>',
    '<｜end_of_query｜>'];
  const high = ['<｜rl_image_pad｜>', '<｜rl_image_start｜>', '<｜image2｜>', '<｜/table>｜', '<｜table｜>',
    '<｜/td｜>', '<｜td｜>', '<｜/tr｜>', '<｜tr｜>', '<｜/polygon｜>', '<｜polygon｜>', '<｜/point｜>',
    '<｜point｜>', '<｜/box｜>', '<｜box｜>', '<｜/ref｜>', '<｜ref｜>', '<｜image｜>'];
  const t = [];
  let id = 128800;
  for (const s of low) t.push([id++, s]);
  for (let n = 21; n <= 435; ++n) t.push([id++, `<|place_holder_mm_span_${String(n).padStart(4, '0')}|>`]);
  for (const s of high) t.push([id++, s]);
  return t;
}

function loadV4Tokenizer(path) {
  const tok = Tokenizer.fromFile(path);
  const table = v4AddedTokensFrom128800();
  for (const [id, content] of table) {
    const have = tok.idToToken(id);
    if (have !== null && have !== undefined) {
      if (have !== content) throw new Error(`id ${id} is '${have}' in the file, V4 says '${content}'`);
      continue;
    }
    if (tok.getVocabSize(true) !== id) throw new Error(`overlay would not get id ${id}`);
    tok.addAddedTokens([new AddedToken(content, true, { normalized: false })]);
    if (tok.tokenToId(content) !== id) throw new Error(`'${content}' did not get id ${id}`);
  }
  return { tok, table };
}

module.exports = { loadV4Tokenizer, v4AddedTokensFrom128800 };
