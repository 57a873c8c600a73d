/**
 * Disk.hostSpans on images qemu-img made: where a driver says a range lies
 * verbatim in a host file, the file holds exactly what the disk reads there;
 * and `platter convert -O raw`, which copies such ranges file to file (the
 * copy engine's host copies), gives qemu-img's bytes.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Disk } from '../../src/core/disk.js';
import { openImage } from '../../src/formats/open.js';
import { nodeHost } from '../../src/storage/host.js';
import { must, needPeers, platter } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('platter-host-spans-');
const MiB = 1 << 20;
const SIZE = 9 * MiB + 512 * 3;

/** Data at unaligned offsets, across block boundaries, zeros and the last byte. */
const WRITES = [
  'write -P 0xab 1000 70000',
  `write -P 0x11 ${2 * MiB - 3} ${MiB + 4099}`,
  `write -P 0x22 ${4 * MiB} ${2 * MiB}`,
  'write -z 196608 131072',
  `write -P 0xcd ${SIZE - 1760} 1760`,
  `write -P 0x5a ${SIZE - 1} 1`,
];

function qemuImage(name: string, format: string, opts: string[], writes = WRITES): string {
  const path = join(dir, name);
  must('qemu-img', ['create', '-q', '-f', format, ...opts, path, String(SIZE)]);
  must('qemu-io', ['-f', format, ...writes.flatMap((w) => ['-c', w]), path]);
  return path;
}

/**
 * Checks every data extent's host spans against the disk's own reads; returns
 * how many data bytes had spans (so a test can insist that some did).
 */
async function checkSpans(d: Disk): Promise<number> {
  let mapped = 0;
  for (const e of await d.extents(0, d.size)) {
    if (e.status !== 'data') continue;
    assert.equal(
      await d.hostSpans(e.offset, e.length, 'write'),
      null,
      'a read-only disk takes no host writes',
    );
    const spans = await d.hostSpans(e.offset, e.length, 'read');
    if (!spans) continue;
    let pos = e.offset;
    for (const s of spans) {
      assert.equal(s.offset, pos, 'spans tile the range in order');
      assert.ok(s.length > 0);
      const want = new Uint8Array(s.length);
      await d.read(want, s.offset);
      const got = new Uint8Array(s.length);
      await s.storage.read(got, s.at);
      assert.ok(
        Buffer.from(got).equals(Buffer.from(want)),
        `host bytes at ${s.at} are the disk's at ${s.offset}`,
      );
      pos += s.length;
    }
    assert.equal(pos, e.offset + e.length);
    mapped += e.length;
  }
  return mapped;
}

/** platter convert -O raw gives what qemu-img convert -f FORMAT -O raw gives (qemu never probes a fixed VHD). */
function convertsLikeQemu(path: string, format: string): void {
  const mine = join(dir, `${Math.random().toString(36).slice(2)}.raw`);
  const ref = `${mine}.ref`;
  const r = platter(['convert', '-O', 'raw', path, mine]);
  assert.equal(r.status, 0, r.stderr);
  must('qemu-img', ['convert', '-f', format, '-O', 'raw', path, ref]);
  assert.ok(readFileSync(mine).equals(readFileSync(ref)), `${path}: convert -O raw matches qemu-img`);
}

const CASES: Array<{ name: string; format: string; opts: string[]; spans: boolean }> = [
  { name: 'raw', format: 'raw', opts: [], spans: true },
  { name: 'qcow2', format: 'qcow2', opts: [], spans: true },
  {
    name: 'qcow2 4 KiB clusters, v2',
    format: 'qcow2',
    opts: ['-o', 'cluster_size=4096,compat=0.10'],
    spans: true,
  },
  { name: 'vhd dynamic', format: 'vpc', opts: ['-o', 'subformat=dynamic'], spans: true },
  { name: 'vhd fixed', format: 'vpc', opts: ['-o', 'subformat=fixed'], spans: true },
  { name: 'vdi dynamic', format: 'vdi', opts: [], spans: true },
  { name: 'vdi static', format: 'vdi', opts: ['-o', 'static=on'], spans: true },
  { name: 'vhdx', format: 'vhdx', opts: [], spans: true },
  // A format that does not (yet) say where its data is: the read path, same bytes.
  { name: 'vmdk', format: 'vmdk', opts: [], spans: false },
];

describe('host spans: images qemu-img made', () => {
  for (const c of CASES) {
    it(`${c.name}: spans hold the disk's bytes; convert -O raw matches qemu-img`, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const path = qemuImage(`${c.name.replace(/\W+/g, '-')}.img`, c.format, c.opts);
      const d = await openImage(nodeHost, path, { readOnly: true });
      try {
        const mapped = await checkSpans(d);
        if (c.spans) assert.ok(mapped >= 3 * MiB, `${c.name}: the data is mapped (${mapped} bytes)`);
        else assert.equal(mapped, 0);
      } finally {
        await d.close();
      }
      convertsLikeQemu(path, c.format);
    });
  }

  it('qcow2 compressed clusters and zero clusters have no spans; plain ones beside them do', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const plain = qemuImage('for-compress.qcow2', 'qcow2', []);
    const path = join(dir, 'compressed.qcow2');
    must('qemu-img', ['convert', '-q', '-c', '-O', 'qcow2', plain, path]);
    // One plain cluster written after compression, and one zero cluster.
    must('qemu-io', ['-c', `write -P 0x77 ${7 * MiB} 65536`, '-c', `write -z ${8 * MiB} 65536`, path]);
    const d = await openImage(nodeHost, path, { readOnly: true });
    try {
      assert.equal(await d.hostSpans(4 * MiB, 65536, 'read'), null, 'compressed');
      assert.equal(await d.hostSpans(8 * MiB, 65536, 'read'), null, 'zero');
      assert.equal((await d.hostSpans(7 * MiB, 65536, 'read'))?.length, 1, 'plain');
      await checkSpans(d);
    } finally {
      await d.close();
    }
    convertsLikeQemu(path, 'qcow2');
  });

  it('a 3-deep qcow2 chain: each extent maps into the layer that holds it', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = qemuImage('base.qcow2', 'qcow2', []);
    const mid = join(dir, 'mid.qcow2');
    const top = join(dir, 'top.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', mid]);
    must('qemu-io', ['-c', `write -P 0x33 ${3 * MiB} ${MiB}`, '-c', `write -z ${4 * MiB} 65536`, mid]);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', mid, '-F', 'qcow2', top]);
    must('qemu-io', ['-c', `write -P 0x44 ${3 * MiB + 4096} 8192`, top]);
    const d = await openImage(nodeHost, top, { readOnly: true });
    try {
      const files = new Set<string>();
      for (const e of await d.extents(0, d.size)) {
        if (e.status !== 'data') continue;
        for (const s of (await d.hostSpans(e.offset, e.length, 'read')) ?? []) files.add(s.storage.name);
      }
      assert.deepEqual([...files].sort(), [base, mid, top].sort(), 'spans come from every layer');
      assert.ok((await checkSpans(d)) > 0);
    } finally {
      await d.close();
    }
    convertsLikeQemu(top, 'qcow2');
  });
});
