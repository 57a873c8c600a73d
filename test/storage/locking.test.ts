/**
 * Image locking end to end: every file of an image (segments, backing files) is
 * locked, and the command line reports a lock conflict as one error line.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../src/core/errors.js';
import { openImage } from '../../src/formats/open.js';
import { nodeHost } from '../../src/storage/host.js';
import { native } from '../../src/storage/native.js';
import { holdWith, qemuIoHold, stop } from '../helpers/holder.js';
import { needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir();
const MiB = 1024 * 1024;

function needNative(t: { skip(msg: string): void }): boolean {
  if (native.available) return true;
  t.skip('native addon not loaded: no locks to test');
  return false;
}

function oneError(r: { status: number; stderr: string }): string {
  assert.notEqual(r.status, 0);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, r.stderr);
  assert.ok(lines[0].startsWith('platter: error: '), lines[0]);
  return lines[0];
}

describe('image locking through the command line', () => {
  it('while qemu-nbd serves an image: info refuses in one line, info -U reads, convert --force onto it refuses', async (t) => {
    if (!needPeers(t, 'qemu-nbd') || !needNative(t)) return;
    const img = join(dir, 'served.img');
    writeFileSync(img, Buffer.alloc(2 * MiB, 0x11));
    const other = join(dir, 'other.img');
    writeFileSync(other, Buffer.alloc(2 * MiB, 0x22));
    const nbd = await holdWith('qemu-nbd', ['-f', 'raw', '-k', join(dir, 'nbd.sock'), img], img);
    try {
      const line = oneError(platter(['info', img]));
      assert.match(line, /served\.img: is in use by another process \(locked.*\); use -U to read it anyway$/);
      const u = platter(['info', '-U', '--json', img]);
      assert.equal(u.status, 0, u.stderr);
      assert.equal(JSON.parse(u.stdout).virtualSize ?? JSON.parse(u.stdout).size, 2 * MiB);
      const c = oneError(platter(['convert', '-O', 'raw', '--force', other, img]));
      assert.match(c, /served\.img: is in use by another process/);
      assert.equal(existsSync(`${img}.partial`), false, 'no partial file left behind');
      assert.ok(
        readFileSync(img).every((b) => b === 0x11),
        'the served image is untouched',
      );
    } finally {
      await stop(nbd);
    }
    const ok = platter(['info', img]);
    assert.equal(ok.status, 0, ok.stderr);
  });
});

describe('replacing an image (host.rename, used for DST.partial -> DST)', () => {
  it('refuses to replace an image another open holds, and a device node', async (t) => {
    if (!needNative(t)) return;
    const dst = join(dir, 'dst.img');
    const partial = join(dir, 'dst.img.partial');
    writeFileSync(dst, 'old');
    writeFileSync(partial, 'new');
    const reader = await nodeHost.open(dst, { write: false });
    try {
      await assert.rejects(
        nodeHost.rename(partial, dst),
        (e: unknown) => e instanceof PlatterError && e.code === 'ELOCKED' && e.message.includes(dst),
      );
      assert.equal(readFileSync(dst, 'utf8'), 'old');
    } finally {
      await reader.close();
    }
    await nodeHost.rename(partial, dst);
    assert.equal(readFileSync(dst, 'utf8'), 'new');
    const dev = join(dir, 'fake-dev');
    const mk = run('mknod', [dev, 'b', '7', '200']);
    if (mk.status !== 0) return; // no mknod here: the file part above still ran
    writeFileSync(partial, 'x');
    await assert.rejects(
      nodeHost.rename(partial, dev),
      (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL' && /block device/.test(e.message),
    );
  });
});

describe('image locking of every file of an image', () => {
  it('a backing file is locked for reading while its overlay is open for writing', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io') || !needNative(t)) return;
    const base = join(dir, 'base.img');
    const top = join(dir, 'top.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', base, '1M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', top]);
    const d = await openImage(nodeHost, top, { readOnly: false });
    try {
      const w = run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', base]);
      assert.notEqual(w.status, 0, 'the backing file is held: writers refused');
      assert.match(w.stderr, /Failed to get "write" lock/);
      const r = run('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 512', base]);
      assert.equal(r.status, 0, `readers share the backing file: ${r.stderr}`);
      const tw = run('qemu-io', ['-f', 'qcow2', '-c', 'read 0 512', top]);
      assert.notEqual(tw.status, 0, 'the overlay is held exclusively');
      // Another platter reader of the backing file coexists; a writer does not.
      const b2 = await openImage(nodeHost, base, { readOnly: true, format: 'raw' });
      await b2.close();
      await assert.rejects(
        openImage(nodeHost, base, { readOnly: false, format: 'raw' }),
        (e: unknown) => e instanceof PlatterError && e.code === 'ELOCKED' && e.message.includes(base),
      );
    } finally {
      await d.close();
    }
    const after = run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', base]);
    assert.equal(after.status, 0, after.stderr);
  });

  it('every segment of a split set is locked; a held middle segment refuses the whole set', async (t) => {
    if (!needPeers(t, 'qemu-io') || !needNative(t)) return;
    const files = [1, 2, 3].map((i) => join(dir, `set.00${i}`));
    for (const f of files) writeFileSync(f, Buffer.alloc(MiB, 3));
    const d = await openImage(nodeHost, files[0], { readOnly: true });
    try {
      const w = run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', files[2]]);
      assert.notEqual(w.status, 0, 'a segment of a set being read refuses writers');
    } finally {
      await d.close();
    }
    const io = await holdWith('qemu-io', qemuIoHold(files[1]), files[1]);
    try {
      await assert.rejects(
        openImage(nodeHost, files[0], { readOnly: true }),
        (e: unknown) => e instanceof PlatterError && e.code === 'ELOCKED' && e.message.includes(files[1]),
      );
      const u = await openImage(nodeHost, files[0], { readOnly: true, forceShare: true });
      assert.equal(u.size, 3 * MiB);
      await u.close();
    } finally {
      await stop(io);
    }
  });
});
