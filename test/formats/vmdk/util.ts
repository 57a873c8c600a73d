/** Helpers for the VMDK tests: qemu-made images, region-wise comparison with qemu's view. */
import assert from 'node:assert/strict';
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import type { Disk } from '../../../src/core/disk.js';
import { openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must } from '../../helpers/peers.js';

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

export interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
  depth?: number;
}

export function qemuMap(path: string): MapEntry[] {
  return JSON.parse(must('qemu-img', ['map', '--output=json', path])) as MapEntry[];
}

/** Merged [start, end) ranges where qemu says data. */
export function dataRanges(
  entries: Array<{ start?: number; offset?: number; length: number; data?: boolean; status?: string }>,
): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const e of entries) {
    const start = e.start ?? e.offset ?? 0;
    const isData = e.status === 'data' || (e.data === true && !(e as { zero?: boolean }).zero);
    if (!isData) continue;
    const last = out[out.length - 1];
    if (last && last[1] === start) last[1] = start + e.length;
    else out.push([start, start + e.length]);
  }
  return out;
}

export function qemuWrite(path: string, writes: Array<[number, number, number]>, fmt = 'vmdk'): void {
  const cmds = writes.flatMap(([off, len, pat]) => ['-c', `write -P ${pat} ${off} ${len}`]);
  must('qemu-io', ['-f', fmt, ...cmds, path]);
}

function readRaw(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, b, done, length - done, offset + done);
      if (n === 0) break; // past EOF of a raw file: zeros
      done += n;
    }
    return b;
  } finally {
    closeSync(fd);
  }
}

/**
 * Compares platter's view of IMAGE with `qemu-img convert -O raw` of it over
 * every range where either side reports data (elsewhere both say zero), and
 * the data ranges themselves. Returns the platter disk's size.
 */
export async function compareWithQemu(
  dir: string,
  image: string,
  opts: { sameMap?: boolean } = {},
): Promise<number> {
  const raw = join(dir, `cmp-${Math.random().toString(36).slice(2)}.raw`);
  must('qemu-img', ['convert', '-O', 'raw', image, raw]);
  const disk = await openImage(nodeHost, image, { readOnly: true });
  try {
    const qsize = JSON.parse(must('qemu-img', ['info', '--output=json', image]))['virtual-size'];
    assert.equal(disk.size, qsize, 'virtual size');
    const ours = dataRanges(await disk.extents(0, disk.size));
    const theirs = dataRanges(qemuMap(image));
    if (opts.sameMap !== false) assert.deepEqual(ours, theirs, 'allocation map agrees with qemu-img map');
    for (const [a, b] of [...ours, ...theirs]) await compareRange(disk, raw, a, b);
    return disk.size;
  } finally {
    await disk.close();
  }
}

export async function compareRange(disk: Disk, raw: string, a: number, b: number): Promise<void> {
  const step = 8 * MiB;
  for (let p = a; p < b; p += step) {
    const n = Math.min(step, b - p);
    const got = Buffer.alloc(n);
    await disk.read(got, p);
    const want = readRaw(raw, p, n);
    if (!got.equals(want)) {
      let i = 0;
      while (got[i] === want[i]) i++;
      assert.fail(`content differs at ${p + i}`);
    }
  }
}
