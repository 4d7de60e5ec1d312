// harness.mjs: what the tests/node tests share: real tern-servers started,
// signalled and reaped by pid, a free loopback port, `tern stats`, the
// process tree, and the case runner with its closing "N passed, N failed"
// line.
//
//   const [build, src] = buildAndSource('test_x.mjs');
//   const h = harness('x', build);
//   h.test('name', async () => { h.check(cond, 'what'); });
//   await h.main(async () => { await h.startServer('A', [...]); });
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

// The npm module `name` (its default export when it has one), or exit 77
// (SKIPPED) when it is not installed.
export async function npmModule(name) {
  try {
    const m = await import(name);
    return m.default ?? m;
  } catch (e) {
    console.log(`SKIPPED: the ${name} npm module is not installed (cd tests/node && npm ci): ${e.message}`);
    process.exit(77);
  }
}

// [BUILD_DIR, SOURCE_DIR] from the command line, or exit 2 with the usage.
export function buildAndSource(script) {
  const [build, src] = process.argv.slice(2);
  if (!build || !src) {
    console.error(`usage: ${script} BUILD_DIR SOURCE_DIR`);
    process.exit(2);
  }
  return [build, src];
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Descendants of pid (from /proc), as [pid, argv0] pairs.
export function descendants(pid) {
  const kids = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const argv0 = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0')[0];
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push([Number(d), argv0]);
    } catch { /* gone meanwhile */ }
  }
  const out = [];
  const walk = (p) => (kids.get(p) ?? []).forEach((k) => { out.push(k); walk(k[0]); });
  walk(pid);
  return out;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// tern-run's greedy continuation of prompt (n tokens; chat: through the
// model's chat template), the text every HTTP client must get back.
export function ternRun(build, model, prompt, n, chat) {
  const args = ['-m', model, '-p', prompt, '-n', String(n), '--temp', '0'];
  if (chat) args.push('--chat');
  const out = execFileSync(path.join(build, 'coordinator/tern-run'), args, { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  // tern-run prints the prompt, the generated text, then a newline.
  if (!out.startsWith(prompt)) throw new Error(`tern-run output does not start with the prompt: ${out}`);
  return out.slice(prompt.length).replace(/\n$/, '');
}

// name: the temporary folder's tag; build: the build tree.
export function harness(name, build) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `tern-${name}-`));
  const SERVER = path.join(build, 'coordinator/tern-server');
  const TERN = path.join(build, 'coordinator/tern');
  const cases = [];
  const children = [];
  const servers = [];
  let failed = 0;

  const check = (cond, what) => {
    if (!cond) {
      failed++;
      console.log(`  FAIL: ${what}`);
    }
    return cond;
  };

  // Starts tern-server with args; resolves once it prints that it serves.
  const startServer = (label, args) => new Promise((resolve, reject) => {
    const logPath = path.join(tmp, `${label}.log`);
    const log = fs.openSync(logPath, 'a');
    const child = spawn(SERVER, args, { stdio: ['ignore', 'pipe', log] });
    fs.closeSync(log);
    children.push(child);
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${label}: not serving after 180 s`)), 180000);
    child.stdout.on('data', (d) => {
      out += d;
      fs.appendFileSync(logPath, d);
      if (/serving the OpenAI API/.test(out)) {
        clearTimeout(timer);
        servers.push(child);
        resolve(child);
      }
    });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${label} exited (${code ?? sig}) before serving:\n` + fs.readFileSync(logPath, 'utf8')));
    });
  });

  const stopServer = async (child) => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    return new Promise((resolve) => {
      child.removeAllListeners('exit');
      child.on('exit', (code) => resolve(code));
      child.kill('SIGTERM');
    });
  };

  // The coordinator's counters (tern stats --json), through tern-server's
  // gRPC relay (with its API key file, when it wants one).
  const stats = (grpcAddr, tokenFile) => JSON.parse(execFileSync(TERN, ['stats', '--json', '--server', grpcAddr,
    ...(tokenFile ? ['--token-file', tokenFile] : [])]).toString());

  // Runs setup, then every case, then cleanup (if given); stops every server it started, the last
  // started first (one that only attaches goes before the one that owns the
  // job), each of which must exit 0 on SIGTERM; prints the closing line and
  // exits 0 when all passed, else 1.
  const main = async (setup, cleanup) => {
    let passed = 0;
    try {
      await setup();
      for (const c of cases) {
        const f0 = failed;
        try {
          await c.fn();
        } catch (e) {
          check(false, `${c.name}: ${e.stack}`);
        }
        console.log(`[${failed === f0 ? '  OK  ' : ' FAIL '}] ${c.name}`);
        if (failed === f0) passed++;
      }
    } catch (e) {
      console.log(`FAIL: ${e.stack ?? e}`);
      failed++;
    } finally {
      if (cleanup) await cleanup().catch((e) => check(false, `cleanup: ${e.stack ?? e}`));
      for (const s of servers.reverse()) {
        const rc = await stopServer(s);
        if (rc !== 0) check(false, `a tern-server exited with ${rc} on SIGTERM`);
      }
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    console.log(`${passed} passed, ${failed ? cases.length - passed : 0} failed, 0 skipped (logs in ${tmp})`);
    if (!failed) fs.rmSync(tmp, { recursive: true, force: true });
    process.exit(failed ? 1 : 0);
  };

  return {
    tmp, check, startServer, stats, main,
    test: (caseName, fn) => cases.push({ name: caseName, fn }),
  };
}
