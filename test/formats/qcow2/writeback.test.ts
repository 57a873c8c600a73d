/**
 * Write-back of qcow2 metadata (image.ts): refcount increments and L2 entries
 * of new data clusters are held in the caches and written together later.
 *
 *  - crash at every write: each prefix of the writes a workload makes must be
 *    an image `qemu-img check` finds free of corruption (leaks allowed);
 *  - batching: a sequential fill makes a few metadata writes, not two per request;
 *  - a table that leaves the L2 cache while its entries are being held is
 *    written at once, and reads see it.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import type { Storage } from '../../../src/core/storage.js';
import type { Qcow2Image } from '../../../src/formats/qcow2/image.js';
import { openQcow2 } from '../../../src/formats/qcow2/index.js';
import { snapshotFeature } from '../../../src/formats/qcow2/snapshots.js';
import { memoryStorage } from '../../../src/storage/memory.js';
import { needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { create, MiB, pattern, qemuCheck } from './util.js';

const dir = tempDir('platter-qcow2-writeback-');
let n = 0;

type Logged = { offset: number; data: Uint8Array };

/** A storage in memory that logs every write (and can hold writes back until a gate opens). */
function logged(initial: Uint8Array): {
  storage: Storage & { bytes(): Uint8Array };
  log: Logged[];
  gate: { when?: (buf: Uint8Array, offset: number) => boolean; open?: () => void; hit?: Promise<void> };
} {
  const mem = memoryStorage('logged.qcow2', initial);
  const log: Logged[] = [];
  const gate: ReturnType<typeof logged>['gate'] = {};
  const storage = {
    ...mem,
    async write(buf: Uint8Array, offset: number) {
      if (gate.when?.(buf, offset)) {
        gate.when = undefined;
        let hit!: () => void;
        gate.hit = new Promise((r) => {
          hit = r;
        });
        await new Promise<void>((r) => {
          gate.open = r;
          hit();
        });
      }
      log.push({ offset, data: buf.slice() });
      await mem.write(buf, offset);
    },
  };
  return { storage, log, gate };
}

async function fresh(options: Record<string, string>, size: number): Promise<Uint8Array> {
  const path = join(dir, `base${n++}.qcow2`);
  await create(path, size, options);
  return new Uint8Array(readFileSync(path));
}

/** The image as it would be on disk after the first k logged writes. */
function prefix(initial: Uint8Array, log: Logged[], k: number): Uint8Array {
  let end = initial.length;
  for (let i = 0; i < k; i++) end = Math.max(end, log[i].offset + log[i].data.length);
  const out = new Uint8Array(end);
  out.set(initial);
  for (let i = 0; i < k; i++) out.set(log[i].data, log[i].offset);
  return out;
}

/** A workload over every metadata path: new clusters, rewrites, COW of snapshot clusters, zeroes, discard. */
async function workload(
  img: Qcow2Image,
  size: number,
  during: (fn: () => Promise<void>) => Promise<void>,
): Promise<Uint8Array> {
  const model = new Uint8Array(size);
  const w = async (off: number, data: Uint8Array): Promise<void> => {
    await img.write(data, off);
    model.set(data, off);
  };
  // Sequential fill in 256 KiB requests, as convert does: many tables and refcount blocks.
  for (let off = 0; off < 6 * MiB; off += 256 * 1024) await w(off, pattern(256 * 1024, off / 4096 + 1));
  await w(size - 3 * MiB, pattern(2 * MiB + 77, 90)); // far away: new L2 tables
  await w(12345, pattern(5000, 91)); // in place
  await during(() => snapshotFeature(img).create('s1'));
  await w(100_000, pattern(300_000, 92)); // shared clusters: copy on write, references dropped
  await w(7 * MiB + 3, pattern(40_000, 93)); // new cluster, partial
  await img.writeZeroes(64 * 1024, 512 * 1024, { mayUnmap: true });
  model.fill(0, 64 * 1024, 64 * 1024 + 512 * 1024);
  await img.discard(2 * MiB, MiB);
  model.fill(0, 2 * MiB, 3 * MiB);
  for (let off = 8 * MiB; off < 10 * MiB; off += 128 * 1024) await w(off, pattern(128 * 1024, off));
  return model;
}

describe('qcow2 metadata write-back', () => {
  for (const options of [
    { cluster_size: '4096', refcount_bits: '16' },
    // 64 refcounts per block and a table that must grow while writes are held back.
    { cluster_size: '512', refcount_bits: '64' },
    { cluster_size: '65536', lazy_refcounts: 'on' },
  ] as Record<string, string>[]) {
    it(`a crash after any write leaves at most leaks (${JSON.stringify(options)})`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const size = 16 * MiB;
      const initial = await fresh(options, size);
      const { storage, log } = logged(initial);
      const img = await openQcow2(storage, false, false);
      // Creating a snapshot has a window of its own: refcounts are raised before the
      // active tables' COPIED flags are cleared, which qemu-img check calls corruption,
      // though nothing can be lost while the snapshot is not yet in the header. Once
      // it is (nb_snapshots, header offset 60), the image must be clean.
      let snapshot: [number, number] = [0, 0];
      const model = await workload(img, size, async (fn) => {
        const from = log.length;
        await fn();
        snapshot = [from, log.length];
      });
      await img.close();
      // Every prefix when there are few writes; otherwise a stride through them, and the ends.
      const stride = Math.max(1, Math.floor(log.length / 150));
      const ks = new Set<number>([log.length, log.length - 1, log.length - 2]);
      for (let k = 1; k < log.length; k += stride) ks.add(k);
      for (let k = snapshot[0] - 2; k <= snapshot[1] + 2; k++) ks.add(k);
      const path = join(dir, `prefix${n++}.qcow2`);
      const visible = (k: number): boolean => new DataView(prefix(initial, log, k).buffer).getUint32(60) > 0;
      const judged = (k: number): boolean =>
        k > 0 && k <= log.length && (k <= snapshot[0] || k >= snapshot[1] || visible(k));
      for (const k of [...ks].filter(judged).sort((a, b) => a - b)) {
        writeFileSync(path, prefix(initial, log, k));
        const c = qemuCheck(path);
        assert.equal(
          c.json.corruptions ?? 0,
          0,
          `after ${k}/${log.length} writes: ${JSON.stringify(c.json)}`,
        );
        assert.ok(c.status === 0 || c.status === 3, `after ${k}/${log.length} writes: exit ${c.status}`);
      }
      // The finished image is clean and holds what was written.
      writeFileSync(path, storage.bytes());
      assert.equal(qemuCheck(path).status, 0);
      const back = await openQcow2(memoryStorage('back', storage.bytes()), true, false);
      const got = new Uint8Array(size);
      await back.read(got, 0);
      assert.ok(Buffer.from(got).equals(Buffer.from(model)), 'content after close');
    });
  }

  // Room for the L2 table but not the data after it, or not even for the table.
  for (const [what, room] of [
    ['data clusters', 1],
    ['an L2 table', 0],
  ] as const) {
    it(`a write that fails on a full disk gives its new ${what} back: no leak`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const cs = 65536;
      const initial = await fresh({ cluster_size: String(cs) }, 16 * MiB);
      const mem = memoryStorage('full.qcow2', initial);
      let limit = Math.ceil(initial.length / cs) * cs + room * cs;
      const full = (end: number): void => {
        if (end > limit) throw new PlatterError('ENOSPC', 'full.qcow2: no space left on device');
      };
      const storage: Storage = {
        ...mem,
        async write(buf, offset) {
          full(offset + buf.length);
          await mem.write(buf, offset);
        },
        async truncate(size) {
          full(size);
          await mem.truncate(size);
        },
      };
      const img = await openQcow2(storage, false, false);
      const data = pattern(256 * 1024, 7);
      await assert.rejects(img.write(data, 0), /no space left on device/);
      // The same write once there is room: the clusters given back are used again.
      limit = Number.POSITIVE_INFINITY;
      await img.write(data, 0);
      await img.close();
      const path = join(dir, `full${n++}.qcow2`);
      writeFileSync(path, mem.bytes());
      const c = qemuCheck(path);
      assert.equal(c.status, 0, `qemu-img check: ${JSON.stringify(c.json)}`);
      const back = await openQcow2(memoryStorage('back', mem.bytes()), true, false);
      const got = new Uint8Array(data.length);
      await back.read(got, 0);
      assert.ok(Buffer.from(got).equals(Buffer.from(data)));
    });
  }

  it('a sequential fill writes its metadata in a few batches, after the data', async () => {
    const cs = 65536;
    const initial = await fresh({ cluster_size: String(cs) }, 64 * MiB);
    const { storage, log } = logged(initial);
    const img = await openQcow2(storage, false, false);
    for (let off = 0; off < 32 * MiB; off += 2 * MiB) await img.write(pattern(2 * MiB, off / MiB + 1), off);
    const before = log.length;
    // 16 requests: only the new L2 table's own refcount and L1 entry went out (not 2 per request).
    assert.equal(
      log.filter((x) => x.data.length < cs).length,
      2,
      JSON.stringify(log.map((x) => [x.offset, x.data.length])),
    );
    // A reader of the file alone sees no mapping yet; the open image does.
    const early = await openQcow2(memoryStorage('early', storage.bytes()), true, false);
    assert.equal((await early.extents(0, 32 * MiB))[0].status, 'hole');
    assert.equal((await img.extents(0, 32 * MiB))[0].status, 'data');
    await img.flush();
    const meta = log.slice(before);
    // One refcount block range, one L2 range: refcounts first.
    assert.equal(meta.length, 2, JSON.stringify(meta.map((x) => [x.offset, x.data.length])));
    await img.close();
    const back = await openQcow2(memoryStorage('back', storage.bytes()), true, false);
    const got = new Uint8Array(2 * MiB);
    await back.read(got, 30 * MiB);
    assert.ok(Buffer.from(got).equals(Buffer.from(pattern(2 * MiB, 31))));
  });

  it('a table evicted from the cache while its entries are held is written at once', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    // 2 MiB clusters: the 32 MiB L2 cache holds 16 tables; one table maps 512 GiB.
    const cs = 2 * MiB;
    const span = (cs / 8) * cs;
    const tables = 20;
    const size = tables * span;
    const initial = await fresh({ cluster_size: String(cs) }, size);
    const { storage, gate } = logged(initial);
    let img = await openQcow2(storage, false, false);
    for (let i = 0; i < tables; i++) await img.write(pattern(4096, i + 1), i * span);
    await img.close();
    img = await openQcow2(storage, false, false);
    // Hold the data write of a new cluster in table 0 while reads walk the other tables.
    const target = span - cs; // the last cluster of table 0: unallocated
    const data = pattern(cs, 99);
    gate.when = (buf) => buf.length === cs;
    const writing = img.write(data, target);
    await gate.hit;
    const one = new Uint8Array(1);
    for (let i = 1; i < tables; i++) await img.read(one, i * span);
    gate.open!();
    await writing;
    const got = new Uint8Array(cs);
    await img.read(got, target);
    assert.ok(Buffer.from(got).equals(Buffer.from(data)), 'read back through the evicted table');
    const first = new Uint8Array(4096);
    await img.read(first, 0);
    assert.ok(Buffer.from(first).equals(Buffer.from(pattern(4096, 1))));
    await img.close();
    const path = join(dir, `evict${n++}.qcow2`);
    writeFileSync(path, storage.bytes());
    assert.equal(qemuCheck(path).status, 0);
    const back = await openQcow2(memoryStorage('back', storage.bytes()), true, false);
    await back.read(got, target);
    assert.ok(Buffer.from(got).equals(Buffer.from(data)), 'read back after reopen');
  });
});
