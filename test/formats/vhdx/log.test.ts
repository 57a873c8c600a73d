/**
 * The log: an image whose writer was killed after its log entry became durable
 * (before it was applied) is read through the log by read-only opens without a
 * change to the file, replayed by writable opens and by qemu-img check -r all.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import { parseHeader, serializeHeader } from '../../../src/formats/vhdx/layout.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { create, MiB, openRead, openWrite, pattern, readAll } from './util.js';

const dir = tempDir('platter-vhdx-log-');
const CHILD = new URL('./kill-after-log.ts', import.meta.url).pathname;
const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

/** Makes an image with committed data, then a killed transaction on top; returns the expected content. */
async function killedImage(
  name: string,
  size: number,
  opts: Record<string, string>,
): Promise<[string, Buffer]> {
  const path = join(dir, name);
  await create(path, size, opts);
  const model = Buffer.alloc(size);
  const d = await openWrite(path);
  const first = pattern(3 * MiB, 7);
  await d.write(first, MiB + 5);
  model.set(first, MiB + 5);
  await d.close();
  // The killed writer allocates new blocks: their BAT entries exist only in the log.
  const off = 6 * MiB - 100;
  const len = 2 * MiB + 300;
  const r = run(process.execPath, ['--import', 'tsx', CHILD, path, String(off), String(len), '9']);
  assert.equal(r.stdout.includes('not killed'), false, `the writer was not killed: ${r.stderr}`);
  model.set(pattern(len, 9), off);
  return [path, model];
}

let shared: Promise<[string, Buffer]> | undefined;
/** Copies of one killed image, made once. */
async function killedCopy(name: string): Promise<string> {
  return (await killedWithModel(name))[0];
}

/** A copy of the shared killed image and its expected content. */
async function killedWithModel(name: string): Promise<[string, Buffer]> {
  shared ??= killedImage('shared.vhdx', 12 * MiB, { block_size: '1M' });
  const [src, model] = await shared;
  const path = join(dir, name);
  copyFileSync(src, path);
  return [path, model];
}

function logGuidSet(path: string): boolean {
  const b = readFileSync(path);
  const hs = [64, 128].map((k) => parseHeader(b.subarray(k * 1024, k * 1024 + 4096), path));
  const cur = hs[0] && (!hs[1] || hs[0].sequence > hs[1].sequence) ? hs[0] : hs[1];
  return !!cur && cur.logGuid.some((x) => x !== 0);
}

describe('vhdx log', () => {
  it('a read-only open reads through an unreplayed log and leaves the file unchanged', async () => {
    const [path, model] = await killedWithModel('ro.vhdx');
    assert.ok(logGuidSet(path), 'the kill left a non-empty log');
    const before = sha(path);
    const d = await openRead(path);
    try {
      assert.ok((await readAll(d)).equals(model));
      // Blocks whose BAT entries live in the log are not where the file says: no host spans.
      assert.equal(await d.hostSpans(6 * MiB, MiB, 'read'), null);
      assert.equal(await d.hostSpans(MiB, MiB, 'read'), null, 'none at all while a log is pending');
      const info = await d.info();
      assert.equal(info.dirty, true);
      assert.equal(info.details?.logPending, 1);
      const c = await d.features.check?.({ repair: 'none' });
      assert.equal(c?.corruptions, 1);
    } finally {
      await d.close();
    }
    assert.equal(sha(path), before);
  });

  it('a writable open replays the log; qemu then finds the image clean and identical', async (t) => {
    const [path, model] = await killedWithModel('rw.vhdx');
    const d = await openWrite(path);
    try {
      assert.ok((await readAll(d)).equals(model));
      const c = await d.features.check?.({ repair: 'all' });
      assert.equal(c?.corruptions, 0);
      assert.equal(c?.repaired?.corruptions, 1);
    } finally {
      await d.close();
    }
    assert.equal(logGuidSet(path), false);
    if (!needPeers(t, 'qemu-img')) return;
    writeFileSync(`${path}.model`, model);
    must('qemu-img', ['check', '-f', 'vhdx', path]);
    assert.match(
      must('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', path, `${path}.model`]),
      /identical/,
    );
  });

  it("qemu-img check -r all replays platter's log to the same content", async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const [path, model] = await killedImage('qemu.vhdx', 10 * MiB, { block_size: '2M', log_size: '2M' });
    // qemu refuses to read an image with a pending log read-only; -r all replays it.
    const ro = run('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', path, path]);
    assert.notEqual(ro.status, 0);
    must('qemu-img', ['check', '-r', 'all', '-f', 'vhdx', path]);
    writeFileSync(`${path}.model`, model);
    assert.match(
      must('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', path, `${path}.model`]),
      /identical/,
    );
  });

  it('a log entry with a bad checksum is a clear error', async () => {
    const path = await killedCopy('badcrc.vhdx');
    const b = readFileSync(path);
    b[MiB + 4096 + 100] ^= 0x40; // inside the entry's first data sector
    writeFileSync(path, b);
    for (const open of [openRead, openWrite]) {
      await assert.rejects(
        open(path),
        (e: unknown) => e instanceof PlatterError && e.code === 'ECORRUPT' && /log/.test(e.message),
      );
    }
  });

  it('a log that points outside the file is a clear error', async () => {
    const path = await killedCopy('outside.vhdx');
    const b = readFileSync(path);
    for (const at of [64 * 1024, 128 * 1024]) {
      const h = parseHeader(b.subarray(at, at + 4096), path);
      assert.ok(h);
      b.set(serializeHeader({ ...h, logOffset: 1024 * MiB }), at);
    }
    writeFileSync(path, b);
    await assert.rejects(
      openRead(path),
      (e: unknown) => e instanceof PlatterError && e.code === 'ECORRUPT' && /past the end/.test(e.message),
    );
  });

  it("a file truncated below the log entry's FlushedFileOffset is refused", async () => {
    const path = await killedCopy('trunc.vhdx');
    const copy = `${path}.copy`;
    copyFileSync(path, copy);
    const b = readFileSync(copy);
    writeFileSync(copy, b.subarray(0, b.length - MiB));
    await assert.rejects(openRead(copy), (e: unknown) => e instanceof PlatterError && e.code === 'ECORRUPT');
  });
});
