// test_chat_page.mjs: tern-server's chat page (GET /) in a real browser,
// Debian's chromium run headless by playwright-core, against a real
// tern-server on the built-in model (deploy/models/tern-kjv.gguf) that
// launches mpirun (coordinator + 1 tern-node stage) and wants an API key.
//
//   node tests/node/test_chat_page.mjs BUILD_DIR SOURCE_DIR
//
// The page is driven as a person would: type, set the inputs, press the
// buttons; what it shows is read back from the DOM and compared with the
// HTTP API's answers to the same requests. Screenshots go to
// BUILD_DIR/tests/chat-page*.png (paths printed).
// Exit 0 all passed, 1 a check failed, 77 (SKIPPED) without playwright-core
// (cd tests/node && npm ci) or without chromium (TERN_CHROMIUM, default
// /usr/bin/chromium: Debian's chromium package, deploy/setup installs it).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { harness, freePort, descendants, sleep, npmModule, buildAndSource } from './harness.mjs';

const { chromium } = await npmModule('playwright-core');
const CHROMIUM = process.env.TERN_CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(CHROMIUM)) {
  console.log(`SKIPPED: no browser at ${CHROMIUM} (apt-get install chromium, or set TERN_CHROMIUM)`);
  process.exit(77);
}
const [build, src] = buildAndSource('test_chat_page.mjs');
const MODEL = path.join(src, 'deploy/models/tern-kjv.gguf');
const SHOTS = path.join(build, 'tests');
const h = harness('chat-page', build);
const { check, test } = h;

const http = `127.0.0.1:${await freePort()}`;
const grpc = `127.0.0.1:${await freePort()}`;
const base = `http://${http}`;
const KEY = 'sk-tern-page-key';
const keyFile = path.join(h.tmp, 'key');
fs.writeFileSync(keyFile, `${KEY}\n`);

let server, browser, page;
const cspViolations = [];

// The API's plain (not streamed) answer to the request the page sent.
async function apiAnswer(sent) {
  const req = { ...sent, stream: false };
  delete req.stream_options;
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${KEY}` }, body: JSON.stringify(req) });
  if (!r.ok) throw new Error(`the API refused ${JSON.stringify(req)}: ${r.status} ${await r.text()}`);
  return r.json();
}

// The last assistant message as shown: its state, text, statistics line and error.
const lastAnswer = () => page.evaluate(() => {
  const all = document.querySelectorAll('.msg.assistant');
  const m = all[all.length - 1];
  return m && {
    index: all.length - 1, state: m.dataset.state, text: m.querySelector('.text').textContent,
    meta: m.querySelector('.meta').textContent, tokens: m.querySelector('.meta').dataset.tokens,
    error: m.querySelector('.error').textContent,
  };
});

// What the page showed, frame by frame: every change of the last answer's text
// or state, as painted (sampled each animation frame).
const watch = () => page.evaluate(() => {
  window.ternFrames = [];
  const sample = () => {
    const all = document.querySelectorAll('.msg.assistant');
    const m = all[all.length - 1];
    if (m) {
      const f = { index: all.length - 1, state: m.dataset.state, text: m.querySelector('.text').textContent };
      const prev = window.ternFrames[window.ternFrames.length - 1];
      if (!prev || prev.index !== f.index || prev.state !== f.state || prev.text !== f.text) window.ternFrames.push(f);
    }
    requestAnimationFrame(sample);
  };
  requestAnimationFrame(sample);
});
const frames = (index) => page.evaluate((i) => window.ternFrames.filter((f) => f.index === i), index);

// The distinct non-empty texts painted while answer `index` was streaming.
async function streamedTexts(index) {
  return (await frames(index)).filter((f) => f.state === 'streaming' && f.text).map((f) => f.text);
}

// Types a prompt with the given inputs, presses Send; resolves to the request
// body the page sent.
async function ask(prompt, inputs) {
  for (const [id, v] of Object.entries(inputs)) await page.fill(`#${id}`, String(v));
  await page.fill('#prompt', prompt);
  const sent = page.waitForRequest((r) => r.url() === `${base}/v1/chat/completions` && r.method() === 'POST');
  await page.click('#send');
  return JSON.parse((await sent).postData());
}

const settled = (index) => page.waitForFunction((i) => {
  const m = document.querySelectorAll('.msg.assistant')[i];
  return m && ['done', 'stopped', 'error'].includes(m.dataset.state);
}, index, { timeout: 60000 });

// Waits until answer `index` has been painted growing at least twice (true),
// or has ended before that (false).
async function growing(index) {
  await page.waitForFunction((i) => {
    const m = document.querySelectorAll('.msg.assistant')[i];
    return (m && ['done', 'stopped', 'error'].includes(m.dataset.state)) || new Set(window.ternFrames
      .filter((f) => f.index === i && f.state === 'streaming' && f.text).map((f) => f.text)).size >= 2;
  }, index, { timeout: 60000 });
  const a = await lastAnswer();
  return check(a.index === index && a.state === 'streaming', `answer ${index} streaming: ${JSON.stringify(a)}`);
}

const sha256 = (s) => `'sha256-${crypto.createHash('sha256').update(s, 'utf8').digest('base64')}'`;

test('GET / without the key: the page and its CSP; the API still wants the key', async () => {
  const r = await fetch(`${base}/`);
  const body = await r.text();
  check(r.status === 200, `GET /: ${r.status}`);
  check(r.headers.get('content-type') === 'text/html; charset=utf-8', `Content-Type ${r.headers.get('content-type')}`);
  check(r.headers.get('x-content-type-options') === 'nosniff', 'nosniff');
  const csp = r.headers.get('content-security-policy') ?? '';
  const script = body.match(/<script>([\s\S]*?)<\/script>/), style = body.match(/<style>([\s\S]*?)<\/style>/);
  check(script && style, 'one inline script and style');
  check(/(^|; )default-src 'none'(;|$)/.test(csp) && !/unsafe-/.test(csp) && /connect-src 'self'/.test(csp),
    `a strict CSP: ${csp}`);
  check(script && csp.includes(`script-src ${sha256(script[1])};`), 'the CSP allows the script by its SHA-256');
  check(style && csp.includes(`style-src ${sha256(style[1])};`), 'the CSP allows the style by its SHA-256');
  check(!/(src|href)\s*=\s*["']?(https?:)?\/\//i.test(body), 'no external resource');
  const head = await fetch(`${base}/`, { method: 'HEAD' });
  check(head.status === 200 && (await head.text()) === '', `HEAD /: ${head.status}`);
  const post = await fetch(`${base}/`, { method: 'POST', body: '{}' });
  check(post.status === 405, `POST /: ${post.status}`);
  const models = await fetch(`${base}/v1/models`);
  check(models.status === 401, `/v1/models without the key: ${models.status}`);
});

test('the page loads under its CSP, shows the stages\' health, asks for the key', async () => {
  await page.goto(`${base}/`);
  await page.waitForSelector('#health[data-ready="yes"]', { timeout: 30000 });
  const summary = await page.textContent('#health .summary');
  check(/ready/.test(summary) && /1\/1 stages up/.test(summary), `health: ${summary}`);
  const stages = await page.$$eval('.stage', (els) => els.map((e) => [e.dataset.up, e.textContent, e.title]));
  check(stages.length === 1 && stages[0][0] === 'yes' && /stage 1 up/.test(stages[0][1]) && /layers 0.3/.test(stages[0][2]),
    `one stage chip: ${JSON.stringify(stages)}`);
  check(await page.textContent('#model') === 'tern-kjv', 'the model id');
  await page.waitForSelector('#key-row', { state: 'visible', timeout: 10000 });
  check(await page.isDisabled('#stop') && !(await page.isDisabled('#send')), 'Send on, Stop off');
  await watch();
});

test('without the key: the HTTP 401 is shown, the prompt comes back', async () => {
  await ask('And God said', {});
  await settled(0);
  const a = await lastAnswer();
  check(a.state === 'error' && /HTTP 401/.test(a.error) && a.text === '', `the error shown: ${JSON.stringify(a)}`);
  check(await page.inputValue('#prompt') === 'And God said', 'the prompt is back in the box');
  check(await page.$eval('.msg.user', (e) => e.classList.contains('dropped')), 'the failed turn is marked dropped');
});

let turn1, turn2;
test('tokens stream in; the shown answer = the API\'s answer to the same request', async () => {
  await page.fill('#api-key', KEY);
  const sent = await ask('And God said', { temperature: 0.9, seed: 7, 'max-tokens': 128 });
  check(JSON.stringify(sent.messages) === JSON.stringify([{ role: 'user', content: 'And God said' }]),
    `only this turn is sent (the dropped one is not): ${JSON.stringify(sent.messages)}`);
  check(sent.temperature === 0.9 && sent.seed === 7 && sent.max_tokens === 128 && sent.model === 'tern-kjv',
    `the inputs are sent: ${JSON.stringify(sent)}`);
  check(sent.stream === true && sent.stream_options?.include_usage === true, 'stream with include_usage');
  await settled(1);
  const a = await lastAnswer();
  const api = await apiAnswer(sent);
  const want = api.choices[0].message.content;
  check(a.state === 'done' && a.error === '', `done without error: ${JSON.stringify(a)}`);
  check(a.text === want, `shown ${JSON.stringify(a.text)} = API ${JSON.stringify(want)}`);
  const seen = await streamedTexts(1);
  check(seen.length >= 2, `the text grew over ${seen.length} painted frames before done`);
  console.log(`  ${a.tokens} tokens painted over ${seen.length} frames; ${a.meta}`);
  check(seen.every((t, i) => want.startsWith(t) && (i === 0 || t.length > seen[i - 1].length)),
    'each painted text is a longer prefix of the answer');
  check(a.tokens === String(api.usage.completion_tokens), `tokens shown ${a.tokens} = usage ${api.usage.completion_tokens}`);
  check(/first token \d+ ms/.test(a.meta) && /[\d.]+ tokens\/s/.test(a.meta), `statistics: ${a.meta}`);
  turn1 = { sent, text: a.text };
});

test('Stop: the stream stops, the server frees the sequence, the page is usable again', async () => {
  const before = h.stats(grpc, keyFile);
  const sent = await ask('Tell me more', { 'max-tokens': 1000 });
  check(JSON.stringify(sent.messages) === JSON.stringify([...turn1.sent.messages,
    { role: 'assistant', content: turn1.text }, { role: 'user', content: 'Tell me more' }]),
  `the history is sent: ${JSON.stringify(sent.messages)}`);
  if (!(await growing(2))) return;
  check(!(await page.isDisabled('#stop')) && await page.isDisabled('#send'), 'Stop on, Send off while streaming');
  await page.click('#stop');
  await settled(2);
  // Polled, not timed: the server sees the closed connection and cancels.
  let s;
  for (let i = 0; i < 300; i++) {
    s = h.stats(grpc, keyFile);
    if (s.requests_cancelled > before.requests_cancelled && s.active_sequences === 0) break;
    await sleep(100);
  }
  check(s.requests_cancelled === before.requests_cancelled + 1 && s.active_sequences === 0 &&
    s.kv_slots_free === s.kv_slots_total, `the sequence is freed: ${JSON.stringify(s)}`);
  check(s.tokens_generated - before.tokens_generated < 1000, `stopped early (${s.tokens_generated - before.tokens_generated} tokens)`);
  const a = await lastAnswer();
  check(a.state === 'stopped' && a.error === '' && /stopped/.test(a.meta) && a.text.length > 0, `stopped: ${JSON.stringify(a)}`);
  const after = (await frames(2)).filter((f) => f.state === 'stopped');
  check(after.length === 1 && after[0].text === a.text, `nothing painted after the stop (${after.length} changes)`);
  check(await page.isDisabled('#stop') && !(await page.isDisabled('#send')), 'Send on, Stop off again');
  turn2 = { sent, text: a.text };

  const next = await ask('And the LORD', { 'max-tokens': 32 });
  check(JSON.stringify(next.messages) === JSON.stringify([...turn2.sent.messages,
    { role: 'assistant', content: turn2.text }, { role: 'user', content: 'And the LORD' }]),
  'the stopped answer stays in the history as far as it got');
  await settled(3);
  const b = await lastAnswer();
  const want = (await apiAnswer(next)).choices[0].message.content;
  check(b.state === 'done' && b.text === want, `after the stop: shown ${JSON.stringify(b.text)} = API ${JSON.stringify(want)}`);
  const shot = path.join(SHOTS, 'chat-page.png');
  await page.screenshot({ path: shot });
  console.log(`  screenshot: ${shot}`);
});

test('nothing broke the CSP', async () => {
  const inPage = await page.evaluate(() => window.ternCsp);
  check(cspViolations.length === 0 && inPage.length === 0, `CSP violations: ${JSON.stringify([...cspViolations, ...inPage])}`);
});

// Last: it takes the job down (never restarted: --restart-limit 0/1; test_resume has restarts).
test('a stage dies mid-stream: the SSE error event is shown, health turns red', async () => {
  await page.click('#new-chat');
  await page.evaluate(() => { window.ternFrames.length = 0; });
  await ask('And God said', { 'max-tokens': 2000 });
  if (!(await growing(0))) return;
  const node = descendants(server.pid).find(([, a]) => a.endsWith('/tern-node'));
  check(node, 'found the tern-node stage among tern-server\'s descendants');
  if (node) process.kill(node[0], 'SIGKILL');
  await settled(0);
  const a = await lastAnswer();
  check(a.state === 'error' && /^the server ended the answer: /.test(a.error) && a.text.length > 0,
    `the error event is shown under the partial answer: ${JSON.stringify(a)}`);
  await page.waitForSelector('#health[data-ready="no"]', { timeout: 60000 });
  check(/unavailable/.test(await page.textContent('#health .summary')), 'health says unavailable');
  const shot = path.join(SHOTS, 'chat-page-error.png');
  await page.screenshot({ path: shot });
  console.log(`  screenshot: ${shot}`);
});

await h.main(async () => {
  server = await h.startServer('S', ['-m', MODEL, '--stages', '1', '--http', http, '--grpc', grpc,
    '--api-key-file', keyFile, '--restart-limit', '0/1', '--', '--ctx', '2048']);
  // As root (CI, this machine) chromium's sandbox cannot start.
  const args = process.getuid?.() === 0 ? ['--no-sandbox'] : [];
  browser = await chromium.launch({ executablePath: CHROMIUM, args });
  console.log(`  ${CHROMIUM} ${browser.version()} headless`);
  page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
  page.setDefaultTimeout(30000);
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  await page.addInitScript(() => {
    window.ternCsp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.ternCsp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
}, async () => {
  if (browser) await browser.close();
});
