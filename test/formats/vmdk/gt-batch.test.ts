/**
 * Grain tables that lie back to back in the file are loaded by one read (up to
 * 256 KiB of them): the result must be what loading them one by one gives, in any
 * order of access, with a GD that breaks the run (a 0 entry, a GT moved away),
 * for readers and writers.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Host, Storage } from '../../../src/core/storage.js';
import { openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { compareWithQemu, MiB, qemuWrite } from './util.js';

const dir = tempDir('platter-vmdk-gtbatch-');

/** nodeHost whose storages record their reads of 2 KiB or more (GT-sized) as [offset, length]. */
function recordingHost(): { host: Host; reads: Array<[number, number]> } {
  const reads: Array<[number, number]> = [];
  const wrap = (s: Storage): Storage =>
    new Proxy(s, {
      get(target, prop) {
        if (prop === 'read') {
          return async (buf: Uint8Array, offset: number) => {
            if (buf.length >= 2048) reads.push([offset, buf.length]);
            await target.read(buf, offset);
          };
        }
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
  const host: Host = new Proxy(nodeHost, {
    get(target, prop) {
      if (prop === 'open') return async (...a: Parameters<Host['open']>) => wrap(await target.open(...a));
      return Reflect.get(target, prop, target);
    },
  });
  return { host, reads };
}

/** 512 MiB qemu-made monolithicSparse (16 GTs of 32 MiB) with data in GTs 0, 5, 6, 9 and 15. */
function makeImage(name: string): { path: string; gd: number; rgd: number } {
  const path = join(dir, name);
  must('qemu-img', ['create', '-q', '-f', 'vmdk', path, '512M']);
  qemuWrite(path, [
    [0, 65536, 0x11],
    [5 * 32 * MiB + 3 * 65536, 2 * 65536, 0x22],
    [6 * 32 * MiB - 4096, 8192, 0x33],
    [9 * 32 * MiB + 7 * MiB, MiB, 0x44],
    [512 * MiB - 65536, 65536, 0x55],
  ]);
  const b = readFileSync(path);
  return { path, gd: Number(b.readBigUInt64LE(56)) * 512, rgd: Number(b.readBigUInt64LE(48)) * 512 };
}

describe('vmdk: grain tables loaded in batches', () => {
  it('back-to-back GTs come in one read; any access order reads what qemu-img reads', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path } = makeImage('batch.vmdk');
    const { host, reads } = recordingHost();
    const disk = await openImage(host, path, { readOnly: true });
    try {
      reads.length = 0;
      // GT 9 first: GTs 9..15 in one read; then the map loads 0..8 in one more.
      const g9 = new Uint8Array(MiB);
      await disk.read(g9, 9 * 32 * MiB + 7 * MiB);
      assert.ok(g9.every((x) => x === 0x44));
      assert.equal(reads.length, 2, `reads: ${JSON.stringify(reads)}`); // the GTs, then the grains
      assert.equal(reads[0][1], 6 * 2048 + 2048, 'GTs 9..15 in one read');
      reads.length = 0;
      await disk.extents(0, disk.size);
      assert.deepEqual(
        reads.map((r) => r[1]),
        [9 * 2048],
        'GTs 0..8 in one read',
      );
    } finally {
      await disk.close();
    }
    await compareWithQemu(dir, path);
  });

  it('a long run of GTs is read 256 KiB (128 GTs) at a time', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'long.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', path, '8G']); // 256 GTs back to back
    qemuWrite(path, [[8 * 1024 * MiB - 65536, 65536, 0x77]]);
    const { host, reads } = recordingHost();
    const disk = await openImage(host, path, { readOnly: true });
    try {
      reads.length = 0;
      const ext = await disk.extents(0, disk.size);
      assert.deepEqual(
        reads.map((r) => r[1]),
        [256 * 1024, 256 * 1024],
      );
      assert.deepEqual(
        ext.map((e) => [e.offset, e.length, e.status]),
        [
          [0, 8 * 1024 * MiB - 65536, 'hole'],
          [8 * 1024 * MiB - 65536, 65536, 'data'],
        ],
      );
    } finally {
      await disk.close();
    }
  });

  it('a GD entry of 0 and a GT moved out of the run split the batch; reads and writes stay right', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path, gd, rgd } = makeImage('broken.vmdk');
    const b = readFileSync(path);
    // GT 3 is empty: drop it from both directories. GT 6 moves to the end of the file.
    b.writeUInt32LE(0, gd + 3 * 4);
    b.writeUInt32LE(0, rgd + 3 * 4);
    const gt6 = b.readUInt32LE(gd + 6 * 4) * 512;
    const end = b.length;
    b.writeUInt32LE(end / 512, gd + 6 * 4);
    const moved = Buffer.concat([b, b.subarray(gt6, gt6 + 2048), Buffer.alloc(65536 - 2048)]);
    moved.fill(0xee, gt6, gt6 + 2048); // the old place holds garbage: it must not be read as GT 6
    writeFileSync(path, moved);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    await compareWithQemu(dir, path);

    // A writer: every GT loaded (some in batches), grains added in GTs 2, 6, 7 and 3 (allocated anew).
    const { host } = recordingHost();
    const disk = await openImage(host, path, { readOnly: false });
    try {
      await disk.write(new Uint8Array(65536).fill(0x61), 7 * 32 * MiB);
      await disk.write(new Uint8Array(65536).fill(0x62), 6 * 32 * MiB);
      await disk.write(new Uint8Array(65536).fill(0x63), 2 * 32 * MiB + 65536);
      await disk.write(new Uint8Array(65536).fill(0x64), 3 * 32 * MiB);
    } finally {
      await disk.close();
    }
    const check = run('qemu-img', ['check', path]);
    assert.equal(check.status, 0, check.stdout);
    await compareWithQemu(dir, path);
    const raw = join(dir, 'broken.raw');
    must('qemu-img', ['convert', '-O', 'raw', path, raw]);
    const r = readFileSync(raw);
    for (const [at, v] of [
      [7 * 32 * MiB, 0x61],
      [6 * 32 * MiB, 0x62],
      [6 * 32 * MiB - 1, 0x33],
      [2 * 32 * MiB + 65536, 0x63],
      [3 * 32 * MiB, 0x64],
      [5 * 32 * MiB + 3 * 65536, 0x22],
    ] as const) {
      assert.equal(r[at], v, `byte at ${at}`);
    }
  });
});
