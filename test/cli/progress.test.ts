/**
 * Progress on stderr in its three forms (bar on a TTY, lines in a pipe, JSON
 * lines), and Ctrl-C during convert: the destination never appears.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { CliContext } from '../../src/cli/context.js';
import { makeProgress } from '../../src/cli/progress.js';
import { must, needPeers, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { BIN, platterIn } from './cli.js';

const dir = tempDir();
const M = 1 << 20;
writeFileSync(join(dir, 'src.raw'), randomBytes(3 * M));

function fakeCtx(isTTY: boolean): { ctx: CliContext; out: string[] } {
  const out: string[] = [];
  const stream = {
    isTTY,
    columns: 100,
    write: (s: string) => out.push(s),
  } as unknown as CliContext['stderr'];
  return {
    ctx: { host: undefined as never, stdout: stream, stderr: stream, signal: new AbortController().signal },
    out,
  };
}

describe('progress renderer', () => {
  it('json: one object per line with phase, done, total, rate, eta', () => {
    const { ctx, out } = fakeCtx(false);
    let t = 0;
    const r = makeProgress(ctx, 'json', () => t);
    r.onProgress({ phase: 'copying', done: 0, total: 100 * M });
    t = 2000;
    r.onProgress({ phase: 'copying', done: 50 * M, total: 100 * M });
    t = 2100;
    r.onProgress({ phase: 'copying', done: 60 * M, total: 100 * M }); // throttled
    t = 4000;
    r.onProgress({ phase: 'copying', done: 100 * M, total: 100 * M });
    const objs = out.map((l) => JSON.parse(l));
    assert.equal(objs.length, 3);
    assert.deepEqual(objs[1], { phase: 'copying', done: 50 * M, total: 100 * M, rate: 25 * M, eta: 2 });
    assert.equal(objs[2].eta, 0);
  });

  it('pipe: plain lines; the final line is not repeated on a phase change', () => {
    const { ctx, out } = fakeCtx(false);
    let t = 0;
    const r = makeProgress(ctx, 'auto', () => t);
    r.onProgress({ phase: 'copying', done: 0, total: 10 * M });
    t = 1000;
    r.onProgress({ phase: 'copying', done: 10 * M, total: 10 * M });
    r.onProgress({ phase: 'verifying', done: 0, total: 10 * M });
    r.finish();
    assert.deepEqual(out, [
      'copying: 0 B / 10 MiB (0.0%) 0 B/s ETA --:--\n',
      'copying: 10 MiB / 10 MiB (100.0%) 10 MiB/s ETA 0:00\n',
      'verifying: 0 B / 10 MiB (0.0%) 0 B/s ETA --:--\n',
    ]);
  });

  it('tty: a bar redrawn in place, ended by a newline', () => {
    const { ctx, out } = fakeCtx(true);
    let t = 0;
    const r = makeProgress(ctx, 'auto', () => t);
    r.onProgress({ phase: 'hashing', done: 0, total: 4 * M });
    t = 500;
    r.onProgress({ phase: 'hashing', done: 2 * M, total: 4 * M });
    r.finish();
    assert.match(out[1], /^\r\[#+\.+\] hashing: 2 MiB \/ 4 MiB \(50\.0%\) .*\x1b\[K$/);
    assert.equal(out.at(-1), '\n');
  });
});

/** Sends one command to nbdkit's pause filter and resolves with its one-letter answer. */
function pauseControl(path: string, cmd: 'p' | 'r'): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('error', reject);
    s.once('data', (d) => {
      s.end();
      resolve(String(d));
    });
    s.once('connect', () => s.write(cmd));
  });
}

describe('progress from the command', () => {
  it('--progress=json and -p in a pipe', () => {
    const j = platterIn(dir, ['convert', '--progress=json', '-O', 'raw', 'src.raw', 'j.raw']);
    assert.equal(j.status, 0, j.stderr);
    const lines = j.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.ok(lines.length >= 2);
    assert.deepEqual(Object.keys(lines[0]), ['phase', 'done', 'total', 'rate', 'eta']);
    assert.deepEqual(lines.at(-1), { ...lines.at(-1), phase: 'copying', done: 3 * M, total: 3 * M, eta: 0 });
    const p = platterIn(dir, ['hash', '-p', 'src.raw']);
    assert.match(p.stderr, /^hashing: 0 B \/ 3 MiB \(0\.0%\)/m);
    assert.match(p.stderr, /^hashing: 3 MiB \/ 3 MiB \(100\.0%\) .* ETA 0:00$/m);
    assert.match(p.stdout, /^SHA256 \(src\.raw\) = [0-9a-f]{64}\n$/);
    assert.equal(platterIn(dir, ['hash', '-p', '-q', 'src.raw']).stderr, '', '-q silences progress');
    // `-p json` as the help shows it (a bare -p takes the next argument only if it is a mode).
    const pj = platterIn(dir, ['hash', '-p', 'json', 'src.raw']);
    assert.equal(pj.status, 0, pj.stderr);
    assert.deepEqual(JSON.parse(pj.stderr.trim().split('\n').at(-1) ?? '').done, 3 * M);
    const bogus = platterIn(dir, ['hash', '--progress=bogus', 'src.raw']);
    assert.equal(bogus.status, 1);
    assert.equal(bogus.stderr, 'platter: error: --progress=bogus: the mode is auto or json\n');
  });

  it('a bar on a pseudo-terminal (script)', (t) => {
    if (!needPeers(t, 'script')) return;
    const cmd = `${process.execPath} ${BIN} hash -p ${join(dir, 'src.raw')}`;
    const r = run('script', ['-qec', cmd, '/dev/null']);
    assert.equal(r.status, 0, r.stdout);
    assert.match(r.stdout, /\r\[#{5,}\] hashing: 3 MiB \/ 3 MiB \(100\.0%\)/);
  });

  it('Ctrl-C during convert (delivered twice at once): exit 1, one error line, neither DST nor DST.partial remains', async (t) => {
    if (!needPeers(t, 'nbdkit')) return;
    const sock = join(dir, 'slow.sock');
    const pidFile = join(dir, 'nbdkit.pid');
    const control = join(dir, 'pause.sock');
    // A slow source (every read waits 100 ms: 256 MiB in 2 MiB reads, 8 at a time, ~1.6 s) that
    // the test pauses once the copy has begun: Ctrl-C then surely lands mid-copy, however fast
    // the machine or however large platter's reads. must() returns once nbdkit accepts connections.
    must('nbdkit', [
      '-U',
      sock,
      '-P',
      pidFile,
      '--filter=pause',
      '--filter=delay',
      'pattern',
      '256M',
      'rdelay=100ms',
      `pause-control=${control}`,
    ]);
    try {
      const child = spawn(
        process.execPath,
        [BIN, 'convert', '--progress=json', '-O', 'raw', `nbd+unix:///?socket=${sock}`, 'out.raw'],
        {
          cwd: dir,
        },
      );
      let stderr = '';
      // 'close', not 'exit': the error line must be read whole, after stderr has ended.
      const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
      // Wait for the copy to begin (DST.partial is made before it); an early exit fails here, never hangs.
      let copying = false;
      await Promise.race([
        new Promise<void>((resolve) => {
          child.stderr.on('data', (d) => {
            stderr += d;
            if (stderr.includes('"phase":"copying"')) {
              copying = true;
              resolve();
            }
          });
        }),
        exited.then((code) => {
          if (!copying) throw new Error(`convert exited (${code}) before copying: ${stderr}`);
        }),
      ]);
      // Requests sent from now on wait; 'P' comes back once those already sent are answered.
      assert.equal(await pauseControl(control, 'p'), 'P');
      assert.ok(existsSync(join(dir, 'out.raw.partial')), 'the work in progress is visibly partial');
      assert.ok(!existsSync(join(dir, 'out.raw')));
      // Twice within a moment, as GNU timeout delivers it (to the child, then its process
      // group): still one clean interrupt, not the forced exit a later second Ctrl-C means.
      child.kill('SIGINT');
      await new Promise((r) => setTimeout(r, 100));
      child.kill('SIGINT');
      // Resumed, the held reads complete (or fail) and platter ends on its own.
      assert.equal(await pauseControl(control, 'r'), 'R');
      const code = await exited;
      assert.equal(code, 1);
      const errs = stderr.split('\n').filter((l) => l.startsWith('platter:'));
      assert.deepEqual(errs, ['platter: error: interrupted: out.raw was not created']);
      assert.deepEqual(
        readdirSync(dir).filter((f) => f.startsWith('out.raw')),
        [],
      );
    } finally {
      const pid = Number(readFileSync(pidFile, 'utf8'));
      if (pid > 0) process.kill(pid);
    }
  });
});
