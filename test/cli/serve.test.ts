/**
 * `platter serve` end to end against the peers: nbdinfo, nbdcopy, qemu-img and
 * qemu-io as clients; qemu-nbd and qemu-io as competing lock holders.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  existsSync,
  ftruncateSync,
  openSync,
  readFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, PLATTER, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { socketPath, startQemuNbd, startServe } from '../nbd/helpers.js';

const MiB = 1 << 20;

/** A sparse raw image: data at 1 MiB and 5 MiB + 4 KiB, holes elsewhere. */
function makeRaw(path: string, size = 8 * MiB): Buffer {
  const content = Buffer.alloc(size);
  randomBytes(MiB).copy(content, MiB);
  randomBytes(64 * 1024).copy(content, 5 * MiB + 4096);
  const fd = openSync(path, 'w+');
  ftruncateSync(fd, size);
  writeSync(fd, content, MiB, MiB, MiB);
  writeSync(fd, content, 5 * MiB + 4096, 64 * 1024, 5 * MiB + 4096);
  closeSync(fd);
  return content;
}

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

const QEMU_WRITES = [
  'write -P 0x5a 0 64k',
  'write -P 0x33 -f 100000 3000',
  'write -z 1M 128k',
  'write -z -u 2M 1M',
  'flush',
];
const qemuIoArgs = (target: string): string[] => [
  '-f',
  'raw',
  ...QEMU_WRITES.flatMap((c) => ['-c', c]),
  target,
];

describe('platter serve', () => {
  const dir = tempDir();
  let n = 0;
  const fresh = (): { path: string; content: Buffer } => {
    const path = join(dir, `img${n++}.raw`);
    return { path, content: makeRaw(path) };
  };

  it('nbdinfo --json and --map agree with the image and platter map', async (t) => {
    if (!needPeers(t, 'nbdinfo')) return;
    const { path } = fresh();
    const map = JSON.parse(platter(['map', '--json', path]).stdout || '[]') as Array<{
      start: number;
      length: number;
      data: boolean;
    }>;
    const srv = await startServe(['--port', '0', '--read-only', path]);
    try {
      assert.match(srv.line, /^nbd:\/\/127\.0\.0\.1:\d+\/$/);
      const info = JSON.parse(must('nbdinfo', ['--json', srv.line])).exports[0];
      assert.equal(info['export-size'], 8 * MiB);
      assert.equal(info.is_read_only, true);
      const got = JSON.parse(must('nbdinfo', ['--map', '--json', srv.line])) as Array<{
        offset: number;
        length: number;
        type: number;
      }>;
      // Expected from platter map: data -> 0, anything else -> hole|zero (3), neighbours merged.
      const want: Array<{ offset: number; length: number; type: number }> = [];
      for (const m of map) {
        const type = m.data ? 0 : 3;
        const last = want[want.length - 1];
        if (last && last.type === type) last.length += m.length;
        else want.push({ offset: m.start, length: m.length, type });
      }
      assert.ok(want.length > 0, 'platter map printed the allocation');
      assert.deepEqual(
        got.map(({ offset, length, type }) => ({ offset, length, type })),
        want,
      );
    } finally {
      assert.equal(await srv.stop(), 0);
    }
  });

  it("a qcow2 backing chain: the allocation map and the content are the chain's", async (t) => {
    if (!needPeers(t, 'nbdinfo', 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    must('qemu-img', ['create', '-f', 'qcow2', base, '8M']);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 1M', '-c', 'write -P 2 4M 64k', base]);
    must('qemu-img', ['create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 3 512k 1M', '-c', 'write -z 4M 64k', top]);
    const expected = join(dir, 'chain.expected');
    must('qemu-img', ['convert', '-O', 'raw', top, expected]);
    const map = JSON.parse(platter(['map', '--json', top]).stdout || '[]') as Array<{
      start: number;
      length: number;
      data: boolean;
    }>;
    const srv = await startServe(['--port', '0', '--read-only', top]);
    try {
      const got = JSON.parse(must('nbdinfo', ['--map', '--json', srv.line])) as Array<{
        offset: number;
        length: number;
        type: number;
      }>;
      const want: Array<{ offset: number; length: number; type: number }> = [];
      for (const m of map) {
        const type = m.data ? 0 : 3;
        const last = want[want.length - 1];
        if (last && last.type === type) last.length += m.length;
        else want.push({ offset: m.start, length: m.length, type });
      }
      assert.deepEqual(
        got.map(({ offset, length, type }) => ({ offset, length, type })),
        want,
      );
      assert.deepEqual(
        want.filter((w) => w.type === 0).map((w) => [w.offset, w.length]),
        [[0, 1536 * 1024]],
        'data where either layer has data, except the zeroed cluster over the base',
      );
      const out = join(dir, 'chain.out');
      must('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.line, out]);
      assert.equal(readFileSync(out).equals(readFileSync(expected)), true);
    } finally {
      assert.equal(await srv.stop(), 0);
    }
  });

  it('nbdcopy and qemu-img convert read the export byte-identically', async (t) => {
    if (!needPeers(t, 'nbdcopy', 'qemu-img')) return;
    const { path, content } = fresh();
    const srv = await startServe(['--port', '0', '--read-only', path]);
    try {
      const a = join(dir, 'nbdcopy.out');
      must('nbdcopy', [srv.line, a]);
      assert.equal(readFileSync(a).equals(content), true, 'nbdcopy');
      const b = join(dir, 'convert.out');
      must('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.line, b]);
      assert.equal(readFileSync(b).equals(content), true, 'qemu-img convert');
    } finally {
      assert.equal(await srv.stop(), 0);
    }
  });

  it('qemu-io writing through serve leaves the image as the same writes done directly (SIGTERM, then SIGINT)', async (t) => {
    if (!needPeers(t, 'qemu-io')) return;
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      const { path } = fresh();
      const direct = `${path}.direct`;
      copyFileSync(path, direct);
      const sock = socketPath(dir);
      const srv = await startServe(['--socket', sock, path]);
      try {
        assert.equal(srv.line, `nbd+unix:///?socket=${encodeURIComponent(sock)}`);
        must('qemu-io', qemuIoArgs(srv.line));
      } finally {
        assert.equal(await srv.stop(sig), 0, `exit status after ${sig}: ${srv.stderr()}`);
      }
      must('qemu-io', qemuIoArgs(direct));
      assert.equal(sha(path), sha(direct), `after ${sig}`);
    }
  });

  it('--snapshot: writes are visible through the export, the image hash is unchanged', async (t) => {
    if (!needPeers(t, 'qemu-io')) return;
    const { path } = fresh();
    const before = sha(path);
    const srv = await startServe(['--port', '0', '--snapshot', path]);
    try {
      must('qemu-io', qemuIoArgs(srv.line));
      const r = run('qemu-io', [
        '-f',
        'raw',
        '-c',
        'read -P 0x5a 0 64k',
        '-c',
        'read -P 0x33 100000 3000',
        '-c',
        'read -P 0 1M 128k',
        srv.line,
      ]);
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /Pattern verification failed/);
      // The image is only read: another reader may open it meanwhile.
      assert.equal(run('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 512', path]).status, 0);
    } finally {
      assert.equal(await srv.stop(), 0);
    }
    assert.equal(sha(path), before);
  });

  it('--physical passes every request to the file and takes no lock', async (t) => {
    if (!needPeers(t, 'qemu-io')) return;
    const { path } = fresh();
    const direct = `${path}.direct`;
    copyFileSync(path, direct);
    const srv = await startServe(['--port', '0', '--physical', path]);
    try {
      must('qemu-io', qemuIoArgs(srv.line));
      // No lock: qemu-io may even write the file while it is served.
      const r = run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 0 64k', path]);
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    } finally {
      assert.equal(await srv.stop(), 0);
    }
    must('qemu-io', qemuIoArgs(direct));
    assert.equal(sha(path), sha(direct));
  });

  it('--export-name names the only export; --json prints the address', async (t) => {
    if (!needPeers(t, 'nbdinfo')) return;
    const { path } = fresh();
    const srv = await startServe(['--port', '0', '-x', 'evidence 1', '--json', '-r', path]);
    try {
      const j = JSON.parse(srv.line);
      assert.equal(j.exportName, 'evidence 1');
      assert.equal(j.size, 8 * MiB);
      assert.equal(j.readOnly, true);
      assert.match(j.uri, /\/evidence%201$/);
      const list = JSON.parse(must('nbdinfo', ['--list', '--json', j.uri]));
      assert.deepEqual(
        list.exports.map((e: { 'export-name': string }) => e['export-name']),
        ['evidence 1'],
      );
    } finally {
      assert.equal(await srv.stop(), 0);
    }
  });

  it("--run: captive mode with $uri, a private socket, and the command's exit status", (t) => {
    if (!needPeers(t, 'nbdinfo')) return;
    const { path } = fresh();
    const ok = platter(['serve', '-r', path, '--run', 'nbdinfo --size "$uri" && test -S "$unixsocket"']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout.trim(), String(8 * MiB));
    const sock = /socket=([^&\s]+)/.exec(
      decodeURIComponent(platter(['serve', '-r', path, '--run', 'echo "$uri"']).stdout),
    )?.[1];
    assert.ok(sock, 'the URI names a socket');
    assert.equal(existsSync(sock), false, 'the private socket is gone afterwards');
    assert.equal(platter(['serve', '-r', path, '--run', 'exit 3']).status, 3);
  });

  it('socket activation: nbdinfo and nbdcopy start platter serve themselves', (t) => {
    if (!needPeers(t, 'nbdinfo', 'nbdcopy')) return;
    const { path, content } = fresh();
    const cmd = ['[', process.execPath, PLATTER, 'serve', '-r', path, ']'];
    assert.equal(must('nbdinfo', ['--size', '--', ...cmd]).trim(), String(8 * MiB), 'nothing else on stdout');
    const out = join(dir, 'activated.out');
    must('nbdcopy', ['--', ...cmd, out]);
    assert.equal(readFileSync(out).equals(content), true);
  });

  it('an E01: refused read-write with a hint; served with --read-only and with --snapshot', async (t) => {
    if (!needPeers(t, 'ewfacquire', 'qemu-io', 'nbdcopy')) return;
    const { path, content } = fresh();
    const target = join(dir, 'evidence');
    must('ewfacquire', ['-u', '-q', '-t', target, path]);
    const e01 = `${target}.E01`;
    const rw = platter(['serve', '--port', '0', e01]);
    assert.equal(rw.status, 1);
    assert.match(rw.stderr, /--read-only, or with --snapshot/);
    const out = join(dir, 'e01.out');
    const ro = platter(['serve', '-r', e01, '--run', `nbdcopy "$uri" ${out}`]);
    assert.equal(ro.status, 0, ro.stderr);
    assert.equal(readFileSync(out).equals(content), true);
    const before = sha(e01);
    const snap = platter([
      'serve',
      '-s',
      e01,
      '--run',
      'qemu-io -f raw -c "write -P 9 0 4k" -c "read -P 9 0 4k" "$uri"',
    ]);
    assert.equal(snap.status, 0, snap.stderr);
    assert.doesNotMatch(snap.stdout, /verification failed/);
    assert.equal(sha(e01), before);
  });

  it('bad arguments: port out of range, --socket with --port, missing image', () => {
    const { path } = fresh();
    const a = platter(['serve', '--port', '70000', path]);
    assert.equal(a.status, 1);
    assert.match(a.stderr, /^platter: error: invalid port '70000'/);
    const b = platter(['serve', '--port', '1', '--socket', join(dir, 'x.sock'), path]);
    assert.equal(b.status, 1);
    assert.match(b.stderr, /--socket cannot be combined/);
    const c = platter(['serve', '--port', '0', join(dir, 'missing.raw')]);
    assert.equal(c.status, 1);
    assert.match(c.stderr, /^platter: error: .*missing\.raw: no such file/);
  });

  describe('locking', () => {
    it("while serve holds an image read-write, qemu-io's write fails with QEMU's lock error", async (t) => {
      if (!needPeers(t, 'qemu-io')) return;
      const { path } = fresh();
      const before = sha(path);
      const srv = await startServe(['--port', '0', path]);
      try {
        const r = run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', path]);
        assert.notEqual(r.status, 0);
        assert.match(r.stderr, /Failed to get "write" lock/);
        assert.match(r.stderr, /Is another process using the image/);
      } finally {
        assert.equal(await srv.stop(), 0);
      }
      assert.equal(sha(path), before);
      // Once served no more, qemu-io may write.
      assert.equal(run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', path]).status, 0);
    });

    it('while qemu-nbd serves an image, platter serve refuses clearly and info -U still works', async (t) => {
      if (!needPeers(t, 'qemu-nbd')) return;
      const { path } = fresh();
      const q = await startQemuNbd(socketPath(dir), ['-f', 'raw', path]);
      try {
        const r = platter(['serve', '--port', '0', path]);
        assert.equal(r.status, 1);
        assert.match(r.stderr, /^platter: error: .*img\d+\.raw: is in use by another process/);
        assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
        const ro = platter(['serve', '--port', '0', '--read-only', path]);
        assert.equal(ro.status, 1, 'a reader is refused too: qemu-nbd does not share writing');
        const info = platter(['info', '-U', '--json', path]);
        assert.equal(info.status, 0, info.stderr);
        assert.equal(JSON.parse(info.stdout).virtualSize ?? JSON.parse(info.stdout).size, 8 * MiB);
      } finally {
        await q.stop();
      }
    });
  });
});
