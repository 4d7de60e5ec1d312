// test_openai.mjs: the official `openai` npm SDK against a real tern-server on
// the built-in model (deploy/models/tern-kjv.gguf).
//
//   node tests/node/test_openai.mjs BUILD_DIR SOURCE_DIR
//
// Three servers, every process started, signalled and reaped by pid:
//   A: tern-server launching mpirun (coordinator + 1 tern-node stage);
//   B: tern-server --attach to A's coordinator, with --api-key-file;
//   C: tern-server --stages 0 with one slot and a queue of 0 (a request while
//      the slot is held is refused: 429).
// Exit 0 all passed, 1 a check failed, 77 (SKIPPED) when the npm modules are
// not installed (deploy/setup runs `npm ci` in tests/node).
import fs from 'node:fs';
import path from 'node:path';
import { harness, freePort, descendants, npmModule, buildAndSource, ternRun as ternRunIn } from './harness.mjs';

const OpenAI = await npmModule('openai');
const [build, src] = buildAndSource('test_openai.mjs');
const MODEL = path.join(src, 'deploy/models/tern-kjv.gguf');
const h = harness('openai', build);
const { check, test, stats } = h;

const ternRun = (prompt, n, chat) => ternRunIn(build, MODEL, prompt, n, chat);

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

const grpcA = `127.0.0.1:${await freePort()}`;
const httpA = `127.0.0.1:${await freePort()}`;
const httpB = `127.0.0.1:${await freePort()}`;
const httpC = `127.0.0.1:${await freePort()}`;
const grpcC = `127.0.0.1:${await freePort()}`;
const keyFile = path.join(h.tmp, 'key');
fs.writeFileSync(keyFile, 'sk-tern-test-key\n');

const user = 'And God said';
const greedy = { temperature: 0, max_tokens: 24 };
let client, keyed;

test('models list', async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  check(models.length === 1 && models[0].id === 'tern-kjv', `one model tern-kjv: ${JSON.stringify(models)}`);
  const one = await client.models.retrieve('tern-kjv');
  check(one.id === 'tern-kjv' && one.object === 'model', 'retrieve tern-kjv');
});

test('completion, greedy = tern-run', async () => {
  const prompt = 'And God said,';
  const r = await client.completions.create({ model: 'tern-kjv', prompt, temperature: 0, max_tokens: 32 });
  const want = ternRun(prompt, 32, false);
  check(r.object === 'text_completion' && r.id.startsWith('cmpl-'), 'object and id');
  check(r.choices[0].text === want, `text ${JSON.stringify(r.choices[0].text)} = tern-run ${JSON.stringify(want)}`);
  check(r.choices[0].finish_reason === 'length', `finish_reason length: ${r.choices[0].finish_reason}`);
  check(r.usage.completion_tokens === 32 && r.usage.prompt_tokens > 0 &&
    r.usage.total_tokens === r.usage.prompt_tokens + 32, `usage ${JSON.stringify(r.usage)}`);
});

test('chat, greedy = tern-run --chat; stream = plain; content parts', async () => {
  const msgs = [{ role: 'user', content: user }];
  const plain = await client.chat.completions.create({ model: 'tern-kjv', messages: msgs, ...greedy });
  const text = plain.choices[0].message.content;
  check(plain.object === 'chat.completion' && plain.choices[0].message.role === 'assistant', 'chat reply shape');
  check(text === ternRun(user, 24, true), `chat text = tern-run --chat: ${JSON.stringify(text)}`);
  const chunks = await collect(await client.chat.completions.create({
    model: 'tern-kjv', messages: msgs, ...greedy, stream: true, stream_options: { include_usage: true } }));
  const ids = new Set(chunks.map((c) => c.id));
  check(ids.size === 1 && [...ids][0].startsWith('chatcmpl-'), `one id for all chunks: ${[...ids]}`);
  check(chunks[0].choices[0].delta.role === 'assistant', 'first delta carries the role');
  const withChoices = chunks.filter((c) => c.choices.length);
  const last = withChoices[withChoices.length - 1];
  check(withChoices.slice(0, -1).every((c) => c.choices[0].finish_reason === null), 'finish_reason null until the last');
  check(last.choices[0].finish_reason === plain.choices[0].finish_reason, `last finish_reason ${last.choices[0].finish_reason}`);
  const streamed = withChoices.map((c) => c.choices[0].delta.content ?? '').join('');
  check(streamed === text, `streamed text = plain: ${JSON.stringify(streamed)}`);
  const u = chunks[chunks.length - 1];
  check(u.choices.length === 0 && u.usage && u.usage.completion_tokens === plain.usage.completion_tokens &&
    u.usage.prompt_tokens === plain.usage.prompt_tokens, `usage chunk: ${JSON.stringify(u)}`);
  const parts = await client.chat.completions.create({
    model: 'tern-kjv', ...greedy,
    messages: [{ role: 'user', content: [{ type: 'text', text: 'And God' }, { type: 'text', text: ' said' }] }] });
  check(parts.choices[0].message.content === text, 'content parts = the same string');
});

test('completion stream without usage', async () => {
  const chunks = await collect(await client.completions.create({
    model: 'tern-kjv', prompt: 'In the beginning', temperature: 0, max_tokens: 16, stream: true }));
  const plain = await client.completions.create({ model: 'tern-kjv', prompt: 'In the beginning', temperature: 0, max_tokens: 16 });
  check(chunks.every((c) => c.choices.length === 1 && !c.usage), 'no usage chunk unless asked');
  check(chunks.map((c) => c.choices[0].text).join('') === plain.choices[0].text, 'streamed completion = plain');
  check(chunks[chunks.length - 1].choices[0].finish_reason === 'length', 'last chunk finish_reason');
});

test('stop strings', async () => {
  const full = (await client.completions.create({ model: 'tern-kjv', prompt: 'And God said,', temperature: 0, max_tokens: 32 })).choices[0].text;
  const words = full.trim().split(/\s+/);
  const stop = ' ' + words[3];
  const cut = full.slice(0, full.indexOf(stop));
  for (const s of [stop, [stop, 'zzzz']]) {
    const r = await client.completions.create({ model: 'tern-kjv', prompt: 'And God said,', temperature: 0, max_tokens: 32, stop: s });
    check(r.choices[0].text === cut && r.choices[0].finish_reason === 'stop',
      `stop ${JSON.stringify(s)}: ${JSON.stringify(r.choices[0].text)} (want ${JSON.stringify(cut)})`);
  }
  const chunks = await collect(await client.completions.create({
    model: 'tern-kjv', prompt: 'And God said,', temperature: 0, max_tokens: 32, stop, stream: true }));
  check(chunks.map((c) => c.choices[0].text).join('') === cut, 'stop string, streaming');
});

test('seed reproduces a sampled reply; penalties accepted', async () => {
  const req = { model: 'tern-kjv', messages: [{ role: 'user', content: user }], temperature: 0.9, top_p: 0.95, seed: 42,
    max_tokens: 24, presence_penalty: 0.5, frequency_penalty: 0.3 };
  const a = await client.chat.completions.create(req);
  const b = await client.chat.completions.create(req);
  check(a.choices[0].message.content === b.choices[0].message.content, 'same seed, same text');
  const g = await client.chat.completions.create({ ...req, temperature: 0, presence_penalty: 2, frequency_penalty: 2 });
  const g0 = await client.chat.completions.create({ ...req, temperature: 0, presence_penalty: 0, frequency_penalty: 0 });
  check(g.choices[0].message.content !== g0.choices[0].message.content, 'penalties change the greedy text');
});

test('logprobs: chat and completions, plain and streamed', async () => {
  const req = { model: 'tern-kjv', messages: [{ role: 'user', content: user }], temperature: 0, max_tokens: 12,
    logprobs: true, top_logprobs: 3 };
  const r = await client.chat.completions.create(req);
  const content = r.choices[0].logprobs?.content ?? [];
  check(content.length === r.usage.completion_tokens, `one entry per token (${content.length} of ${r.usage.completion_tokens})`);
  const bytes = [];
  for (const [i, e] of content.entries()) {
    check(e.logprob <= 0 && e.top_logprobs.length === 3, `entry ${i}: logprob <= 0, 3 alternatives`);
    // Greedy: the chosen token is the most likely, alternatives in order.
    check(e.top_logprobs[0].logprob === e.logprob && e.top_logprobs[0].token === e.token, `entry ${i}: greedy = top 1`);
    check(e.top_logprobs.every((t, k) => k === 0 || t.logprob <= e.top_logprobs[k - 1].logprob), `entry ${i}: sorted`);
    bytes.push(...e.bytes);
  }
  check(Buffer.from(bytes).toString() === r.choices[0].message.content, 'the entries\' bytes are the text');
  // Streamed: the same entries, spread over the chunks.
  const st = await client.chat.completions.create({ ...req, stream: true });
  const streamed = [];
  for await (const ch of st)
    for (const c of ch.choices) streamed.push(...(c.logprobs?.content ?? []));
  check(JSON.stringify(streamed) === JSON.stringify(content), 'streamed entries = the plain reply\'s');
  // Sampling settings do not change the numbers: log softmax of the model's logits.
  const hot = await client.chat.completions.create({ ...req, temperature: 1.5, seed: 3, max_tokens: 1 });
  check(hot.choices[0].logprobs.content[0].top_logprobs[0].logprob === content[0].top_logprobs[0].logprob,
    'temperature does not change the first position\'s logprobs');
  const c = await client.completions.create({ model: 'tern-kjv', prompt: user, temperature: 0, max_tokens: 6, logprobs: 2 });
  const lp = c.choices[0].logprobs;
  check(lp.tokens.length === 6 && lp.token_logprobs.length === 6 && lp.top_logprobs.length === 6, 'completions: 6 columns');
  check(lp.tokens.join('') === c.choices[0].text, 'completions: the tokens are the text');
  check(lp.top_logprobs.every((t) => Object.keys(t).length <= 2), 'completions: 2 alternatives');
  check(lp.text_offset[0] === 0 && lp.text_offset.every((o, i) => i === 0 || o >= lp.text_offset[i - 1]), 'text offsets');
});

test('errors are the SDK exception classes', async () => {
  const bad = async (req, cls, status, what) => {
    try {
      await client.chat.completions.create({ model: 'tern-kjv', messages: [{ role: 'user', content: 'hi' }], ...req });
      check(false, `${what}: no error`);
    } catch (e) {
      check(e instanceof cls && e.status === status, `${what}: ${e.constructor.name} ${e.status} ${e.message}`);
      check(typeof e.error?.message === 'string' && e.error.type, `${what}: OpenAI-shaped error body`);
    }
  };
  await bad({ n: 2 }, OpenAI.BadRequestError, 400, 'n = 2');
  await bad({ tools: [{ type: 'function', function: { name: 'f', parameters: {} } }] }, OpenAI.BadRequestError, 400, 'tools');
  await bad({ response_format: { type: 'json_object' } }, OpenAI.BadRequestError, 400, 'response_format');
  await bad({ logprobs: true, top_logprobs: 21 }, OpenAI.BadRequestError, 400, 'top_logprobs over 20');
  await bad({ top_logprobs: 2 }, OpenAI.BadRequestError, 400, 'top_logprobs without logprobs');
  await bad({ max_tokens: 100000 }, OpenAI.BadRequestError, 400, 'max_tokens past the context');
  await bad({ temperature: 7 }, OpenAI.BadRequestError, 400, 'temperature out of range');
  await bad({ messages: [{ role: 'tool', content: 'x' }] }, OpenAI.BadRequestError, 400, 'tool role');
  await bad({ stream: true, n: 3 }, OpenAI.BadRequestError, 400, 'a refused stream is a 400, not a 200');
  try {
    await client.completions.create({ model: 'tern-kjv', prompt: ['a', 'b'] });
    check(false, 'two prompts: no error');
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError, `two prompts: ${e.constructor.name}`);
  }
  const noKey = new OpenAI({ baseURL: `http://${httpB}/v1`, apiKey: 'wrong', maxRetries: 0 });
  try {
    await noKey.models.list();
    check(false, 'wrong key: no error');
  } catch (e) {
    check(e instanceof OpenAI.AuthenticationError && e.status === 401, `wrong key: ${e.constructor.name} ${e.status}`);
  }
  const r = await keyed.chat.completions.create({ model: 'tern-kjv', messages: [{ role: 'user', content: user }], ...greedy });
  check(r.choices[0].message.content === ternRun(user, 24, true), 'the right key, through --attach');
  const h = await fetch(`http://${httpB}/health`);
  check(h.status === 200, `/health needs no key: ${h.status}`);
  const busy = new OpenAI({ baseURL: `http://${httpC}/v1`, apiKey: 'x', maxRetries: 0 });
  // The one slot held by a stream that cannot end early (ignore_eos, the
  // context's worth of tokens), read only after the refused request.
  const holder = await busy.completions.create({ model: 'tern-kjv', prompt: 'hi', max_tokens: 120, ignore_eos: true, stream: true });
  const it = holder[Symbol.asyncIterator]();
  await it.next();
  try {
    await busy.completions.create({ model: 'tern-kjv', prompt: 'hi', max_tokens: 2 });
    check(false, 'queue full: no error');
  } catch (e) {
    check(e instanceof OpenAI.RateLimitError && e.status === 429, `queue full: ${e.constructor.name} ${e.status}`);
    check(e.headers?.['retry-after'] === '1', `Retry-After: ${e.headers?.['retry-after']}`);
  }
  holder.controller.abort();
});

test('tokenize, health, plain HTTP errors', async () => {
  const t = await (await fetch(`http://${httpA}/tokenize`, { method: 'POST', body: JSON.stringify({ content: user, with_pieces: true }) })).json();
  check(Array.isArray(t.tokens) && t.count === t.tokens.length && t.pieces.join('').endsWith(user), `tokenize: ${JSON.stringify(t)}`);
  const post = async (p, body) => fetch(`http://${httpA}${p}`, { method: 'POST', body: JSON.stringify(body) });
  const text = 'And God said, \u00e9\u{1F600} <|eot_id|>';
  const ids = (await (await post('/tokenize', { content: text })).json()).tokens;
  const back = await (await post('/detokenize', { tokens: ids })).json();
  check(back.content === text, `detokenize(tokenize(x)) = x: ${JSON.stringify(back)}`);
  const bad = await post('/detokenize', { tokens: [1, 99999999] });
  check(bad.status === 400 && /vocabulary/.test((await bad.json()).error.message), `a token outside the vocabulary: ${bad.status}`);
  const h = await (await fetch(`http://${httpA}/health`)).json();
  check(h.ready === true && h.stages_up === 1 && h.stages_total === 1, `health: ${JSON.stringify(h)}`);
  const big = await fetch(`http://${httpA}/v1/completions`, { method: 'POST', body: 'x'.repeat(5 << 20) });
  check(big.status === 413, `5 MiB body: ${big.status}`);
  const nf = await fetch(`http://${httpA}/v1/nothing`);
  check(nf.status === 404 && (await nf.json()).error, `unknown path: ${nf.status}`);
  const mal = await fetch(`http://${httpA}/v1/chat/completions`, { method: 'POST', body: '{"messages": [' });
  check(mal.status === 400 && (await mal.json()).error.type === 'invalid_request_error', `malformed JSON: ${mal.status}`);
});

test('64 concurrent streams (16 slots, the rest queued), each = its prompt\'s single greedy reply', async () => {
  const prompts = [user, 'In the beginning', 'And the earth was', 'Blessed are they'];
  const ask = (content, stream) => client.chat.completions.create({ model: 'tern-kjv', messages: [{ role: 'user', content }], ...greedy, stream });
  const want = await Promise.all(prompts.map(async (p) => (await ask(p, false)).choices[0].message.content));
  const runs = await Promise.all(Array.from({ length: 64 }, async (_, i) => {
    const chunks = await collect(await ask(prompts[i % 4], true));
    return chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  }));
  const same = runs.filter((r, i) => r === want[i % 4]).length;
  check(same === 64, `every stream = its single reply (${same}/64)`);
});

test('a client aborting mid-stream frees its sequence', async () => {
  const before = stats(grpcA);
  const ctl = new AbortController();
  const stream = await client.completions.create({
    model: 'tern-kjv', prompt: 'And God said,', temperature: 0, max_tokens: 2000, ignore_eos: true, stream: true },
  { signal: ctl.signal });
  // The SDK ends the iteration quietly on abort (or throws an abort error).
  let n = 0;
  try {
    for await (const c of stream) {
      // Chunks the SDK had already read may still come after abort():
      // stop reading at once, as a client that goes away does.
      if (c.choices[0].text && ++n === 3) {
        ctl.abort();
        break;
      }
    }
  } catch (e) {
    check(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError', `abort raises ${e.constructor.name}`);
  }
  check(n === 3, `the stream stopped at the abort (${n} chunks)`);
  // Polled, not timed: the coordinator sees the cancel and frees the slot.
  let s;
  for (let i = 0; i < 300; i++) {
    s = stats(grpcA);
    if (s.requests_cancelled > before.requests_cancelled && s.active_sequences === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  check(s.requests_cancelled === before.requests_cancelled + 1, `cancelled ${before.requests_cancelled} -> ${s.requests_cancelled}`);
  check(s.active_sequences === 0 && s.kv_slots_free === s.kv_slots_total, `slots free again: ${JSON.stringify(s)}`);
  check(s.tokens_generated - before.tokens_generated < 2000, `generation stopped early (${s.tokens_generated - before.tokens_generated} tokens)`);
});

// Last: it takes A's job down (A never restarts it: --restart-limit 0/1; test_resume has restarts).
test('a stage dies mid-stream: an error event, a closed body, then 503', async () => {
  const stream = await client.chat.completions.create({
    model: 'tern-kjv', messages: [{ role: 'user', content: user }], temperature: 0, max_tokens: 2000,
    ignore_eos: true, stream: true });
  let n = 0, err = null;
  try {
    for await (const c of stream) {
      if (c.choices[0]?.delta?.content && ++n === 3) {
        const node = descendants(jobA.pid).find(([, a]) => a.endsWith('/tern-node'));
        check(node, 'found the tern-node stage among tern-server\'s descendants');
        if (node) process.kill(node[0], 'SIGKILL');
      }
    }
  } catch (e) {
    err = e;
  }
  check(err instanceof OpenAI.APIError && /UNAVAILABLE|down|stage|pipeline/i.test(err.message ?? ''),
    `mid-stream failure raises the SDK's APIError: ${err?.constructor?.name} ${err?.message}`);
  let h;
  for (let i = 0; i < 300; i++) {
    h = await fetch(`http://${httpA}/health`);
    if (h.status === 503) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  check(h.status === 503, `/health after the job died: ${h.status}`);
  try {
    await client.completions.create({ model: 'tern-kjv', prompt: 'hi', max_tokens: 2 });
    check(false, 'job down: no error');
  } catch (e) {
    check(e instanceof OpenAI.InternalServerError && e.status === 503, `job down: ${e.constructor.name} ${e.status}`);
  }
});

let jobA;
await h.main(async () => {
  jobA = await h.startServer('A', ['-m', MODEL, '--stages', '1', '--http', httpA, '--grpc', grpcA, '--restart-limit', '0/1', '--', '--ctx', '2048']);
  await h.startServer('B', ['--attach', grpcA, '--http', httpB, '--grpc', 'off', '--api-key-file', keyFile]);
  await h.startServer('C', ['-m', MODEL, '--stages', '0', '--http', httpC, '--grpc', grpcC, '--', '--slots', '1', '--queue', '0']);
  client = new OpenAI({ baseURL: `http://${httpA}/v1`, apiKey: 'unused', maxRetries: 0 });
  keyed = new OpenAI({ baseURL: `http://${httpB}/v1`, apiKey: 'sk-tern-test-key', maxRetries: 0 });
});
