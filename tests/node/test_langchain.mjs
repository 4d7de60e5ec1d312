// test_langchain.mjs: LangChain's `@langchain/openai` (ChatOpenAI and the
// completions LLM, over the openai SDK it bundles) against real tern-servers
// on the built-in model (deploy/models/tern-kjv.gguf).
//
//   node tests/node/test_langchain.mjs BUILD_DIR SOURCE_DIR
//
// Two servers, every process started, signalled and reaped by pid:
//   A: tern-server launching mpirun (coordinator + 1 tern-node stage), with
//      --api-key-file (LangChain sends the key as a bearer token);
//   C: tern-server --stages 0 with one slot and a queue of 0, for the 429 that
//      LangChain's client retries until the slot is free.
// Exit 0 all passed, 1 a check failed, 77 (SKIPPED) when the npm modules are
// not installed (deploy/setup runs `npm ci` in tests/node).
import fs from 'node:fs';
import path from 'node:path';
import { harness, freePort, npmModule, buildAndSource, ternRun as ternRunIn, sleep } from './harness.mjs';

const { ChatOpenAI, OpenAI: LangChainLLM } = await npmModule('@langchain/openai');
const { HumanMessage, SystemMessage, AIMessage } = await npmModule('@langchain/core/messages');
const { ChatPromptTemplate } = await npmModule('@langchain/core/prompts');
const { StringOutputParser } = await npmModule('@langchain/core/output_parsers');
const [build, src] = buildAndSource('test_langchain.mjs');
const MODEL = path.join(src, 'deploy/models/tern-kjv.gguf');
const h = harness('langchain', build);
const { check, test, stats } = h;
const ternRun = (prompt, n, chat) => ternRunIn(build, MODEL, prompt, n, chat);

const grpcA = `127.0.0.1:${await freePort()}`;
const httpA = `127.0.0.1:${await freePort()}`;
const httpC = `127.0.0.1:${await freePort()}`;
const grpcC = `127.0.0.1:${await freePort()}`;
const keyFile = path.join(h.tmp, 'key');
const KEY = 'sk-tern-langchain';
fs.writeFileSync(keyFile, KEY + '\n');

const user = 'And God said';
// A ChatOpenAI on server A: greedy, the key, no retries unless asked.
const chat = (opts = {}) => new ChatOpenAI({
  model: 'tern-kjv', temperature: 0, maxTokens: 24, apiKey: KEY, maxRetries: 0,
  configuration: { baseURL: `http://${httpA}/v1` }, ...opts });

// The status of what a LangChain call threw (it keeps the SDK's error, or
// wraps it with the status on it).
const statusOf = (e) => e?.status ?? e?.response?.status ?? e?.cause?.status;

async function metric(addr, line) {
  const text = await (await fetch(`http://${addr}/metrics`)).text();
  const m = text.split('\n').find((l) => l.startsWith(line + ' '));
  return m ? Number(m.slice(line.length + 1)) : 0;
}

test('invoke: greedy text = tern-run --chat, usage metadata', async () => {
  const r = await chat().invoke([new HumanMessage(user)]);
  check(r instanceof AIMessage, `an AIMessage: ${r?.constructor?.name}`);
  check(r.content === ternRun(user, 24, true), `text = tern-run --chat: ${JSON.stringify(r.content)}`);
  const u = r.usage_metadata;
  check(u && u.output_tokens === 24 && u.input_tokens > 0 && u.total_tokens === u.input_tokens + 24,
    `usage_metadata ${JSON.stringify(u)}`);
  check(r.response_metadata?.finish_reason === 'length', `finish_reason: ${r.response_metadata?.finish_reason}`);
  const s = await chat().invoke(user);
  check(s.content === r.content, 'a plain string prompt is the same one user message');
});

test('stream: chunks concatenate to the invoke text, usage on the stream', async () => {
  const whole = (await chat().invoke([new HumanMessage(user)])).content;
  let acc, n = 0;
  for await (const c of await chat({ streamUsage: true }).stream([new HumanMessage(user)])) {
    acc = acc ? acc.concat(c) : c;
    if (c.content) n++;
  }
  check(n > 1, `several content chunks (${n})`);
  check(acc.content === whole, `streamed = invoked: ${JSON.stringify(acc.content)}`);
  check(acc.usage_metadata?.output_tokens === 24, `stream usage ${JSON.stringify(acc.usage_metadata)}`);
});

test('a chain: prompt template | model | string parser, and batch', async () => {
  const prompt = ChatPromptTemplate.fromMessages([['system', 'Answer as the scripture does.'], ['user', '{q}']]);
  const chain = prompt.pipe(chat()).pipe(new StringOutputParser());
  const out = await chain.invoke({ q: user });
  const direct = await chat().invoke([new SystemMessage('Answer as the scripture does.'), new HumanMessage(user)]);
  check(typeof out === 'string' && out === direct.content, `chain output = the messages sent by hand: ${JSON.stringify(out)}`);
  const qs = ['In the beginning', 'And the earth', user];
  const many = await chat().batch(qs.map((q) => [new HumanMessage(q)]));
  for (const [i, q] of qs.entries())
    check(many[i].content === ternRun(q, 24, true), `batch ${i} = tern-run --chat for ${JSON.stringify(q)}`);
});

test('stop sequences, seeded sampling, logprobs', async () => {
  const full = (await chat({ maxTokens: 32 }).invoke(user)).content;
  const words = full.trim().split(/\s+/);
  check(words.length > 4, `enough words to cut: ${JSON.stringify(full)}`);
  const stop = ' ' + words[3];
  const cut = await chat({ maxTokens: 32 }).invoke(user, { stop: [stop] });
  check(cut.content === full.slice(0, full.indexOf(stop)) && cut.response_metadata?.finish_reason === 'stop',
    `stop ${JSON.stringify(stop)}: ${JSON.stringify(cut.content)}`);
  // seed is a call option in LangChain.
  const hot = (seed) => chat({ temperature: 0.9, topP: 0.95, frequencyPenalty: 0.3, presencePenalty: 0.2 }).invoke(user, { seed });
  const [a, b] = [await hot(7), await hot(7)];
  check(a.content === b.content, 'the same seed gives the same sampled text');
  const others = await Promise.all([8, 9, 10].map(hot));
  check(others.some((o) => o.content !== a.content), 'other seeds sample other text');
  const lp = await chat({ logprobs: true, topLogprobs: 2, maxTokens: 8 }).invoke(user);
  const content = lp.response_metadata?.logprobs?.content ?? [];
  check(content.length === 8, `one logprob entry per token (${content.length})`);
  check(content.every((e) => e.logprob <= 0 && e.top_logprobs.length === 2 && e.top_logprobs[0].token === e.token),
    'greedy: each chosen token is its top alternative');
  check(content.map((e) => e.token).join('') === lp.content, 'the entries\' tokens are the text');
});

test('the completions LLM: greedy = tern-run', async () => {
  const llm = new LangChainLLM({ model: 'tern-kjv', temperature: 0, maxTokens: 32, apiKey: KEY, maxRetries: 0,
    configuration: { baseURL: `http://${httpA}/v1` } });
  const prompt = 'And God said,';
  const text = await llm.invoke(prompt);
  check(text === ternRun(prompt, 32, false), `completion = tern-run: ${JSON.stringify(text)}`);
  let streamed = '';
  for await (const c of await llm.stream(prompt)) streamed += c;
  check(streamed === text, 'streamed completion = invoked');
});

test('errors: a wrong key is 401, tools and n > 1 are a 400', async () => {
  const bad = async (fn, status, what) => {
    try {
      await fn();
      check(false, `${what}: no error`);
    } catch (e) {
      check(statusOf(e) === status, `${what}: status ${statusOf(e)} (${e.constructor.name}: ${e.message})`);
    }
  };
  await bad(() => chat({ apiKey: 'wrong' }).invoke(user), 401, 'wrong key');
  const tool = { type: 'function', function: { name: 'lookup', description: 'look a verse up',
    parameters: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] } } };
  await bad(() => chat().bindTools([tool]).invoke(user), 400, 'tools');
  await bad(() => chat({ n: 2 }).invoke(user), 400, 'n = 2');
});

test('429 while the only slot is held: LangChain retries, then succeeds', async () => {
  const busy = new ChatOpenAI({ model: 'tern-kjv', temperature: 0, maxTokens: 4, apiKey: 'x', maxRetries: 8,
    configuration: { baseURL: `http://${httpC}/v1` } });
  const before = await metric(httpC, 'tern_http_requests_total{code="429"}');
  // The slot, held by a stream that cannot end early (ignore_eos).
  const ctl = new AbortController();
  const holder = await fetch(`http://${httpC}/v1/completions`, { method: 'POST', signal: ctl.signal,
    body: JSON.stringify({ model: 'tern-kjv', prompt: 'hi', max_tokens: 120, ignore_eos: true, stream: true }) });
  const reader = holder.body.getReader();
  await reader.read();
  const call = busy.invoke(user);
  // Polled, not timed: let go of the slot once the server has refused the call.
  let refused = before;
  for (let i = 0; i < 600 && refused === before; i++) {
    await sleep(50);
    refused = await metric(httpC, 'tern_http_requests_total{code="429"}');
  }
  check(refused > before, `the server answered 429 (${before} -> ${refused})`);
  ctl.abort();
  await reader.cancel().catch(() => {});
  const r = await call;
  check(r.content === ternRun(user, 4, true), `the retried call's text = tern-run: ${JSON.stringify(r.content)}`);
});

test('an aborted stream frees its sequence', async () => {
  const before = stats(grpcA, keyFile);
  const ctl = new AbortController();
  let n = 0;
  try {
    const st = await chat({ maxTokens: 2000, modelKwargs: { ignore_eos: true } }).stream(user, { signal: ctl.signal });
    for await (const c of st) {
      if (c.content && ++n === 3) {
        ctl.abort();
        break;
      }
    }
  } catch (e) {
    check(e.name === 'AbortError' || /abort/i.test(e.message), `abort raises ${e.constructor.name}: ${e.message}`);
  }
  check(n === 3, `the stream stopped at the abort (${n} chunks)`);
  let s;
  for (let i = 0; i < 300; i++) {
    s = stats(grpcA, keyFile);
    if (s.requests_cancelled > before.requests_cancelled && s.active_sequences === 0) break;
    await sleep(100);
  }
  check(s.requests_cancelled === before.requests_cancelled + 1, `cancelled ${before.requests_cancelled} -> ${s.requests_cancelled}`);
  check(s.active_sequences === 0 && s.kv_slots_free === s.kv_slots_total, `slots free again: ${JSON.stringify(s)}`);
  check(s.tokens_generated - before.tokens_generated < 2000, `generation stopped early (${s.tokens_generated - before.tokens_generated})`);
});

await h.main(async () => {
  await h.startServer('A', ['-m', MODEL, '--stages', '1', '--http', httpA, '--grpc', grpcA, '--api-key-file', keyFile,
    '--', '--ctx', '2048']);
  await h.startServer('C', ['-m', MODEL, '--stages', '0', '--http', httpC, '--grpc', grpcC, '--', '--slots', '1', '--queue', '0']);
});
