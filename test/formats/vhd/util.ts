/** Helpers shared by the VHD and VDI tests. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { isAllZero } from '../../../src/core/bytes.js';
import type { Disk } from '../../../src/core/disk.js';
import { isPlatterError } from '../../../src/core/errors.js';
import { openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, run } from '../../helpers/peers.js';

export async function openRo(path: string, options: Record<string, string> = {}): Promise<Disk> {
  return openImage(nodeHost, path, { readOnly: true, options });
}

export async function readAll(disk: Disk): Promise<Uint8Array> {
  const buf = new Uint8Array(disk.size);
  const step = 1 << 20;
  for (let p = 0; p < disk.size; p += step)
    await disk.read(buf.subarray(p, Math.min(disk.size, p + step)), p);
  return buf;
}

export const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The bytes qemu sees (qemu-img convert to raw). */
export function qemuBytes(dir: string, path: string, fmt: string): Uint8Array {
  const out = join(dir, `qemu-view-${Math.random().toString(36).slice(2)}.raw`);
  must('qemu-img', ['convert', '-f', fmt, '-O', 'raw', path, out]);
  return readFileSync(out);
}

export function qemuSize(path: string, fmt: string): number {
  return JSON.parse(must('qemu-img', ['info', '--output=json', '-f', fmt, path]))['virtual-size'];
}

/** Writes a pattern with qemu-io at each [offset, length], returning the model of the disk. */
export function qemuWrites(
  path: string,
  fmt: string,
  size: number,
  writes: Array<[number, number, number]>,
): Uint8Array {
  const model = new Uint8Array(size);
  const args = ['-f', fmt];
  for (const [off, len, pat] of writes) {
    args.push('-c', `write -P ${pat} ${off} ${len}`);
    model.fill(pat, off, off + len);
  }
  must('qemu-io', [...args, path]);
  return model;
}

export function assertSame(got: Uint8Array, want: Uint8Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  if (Buffer.compare(got, want) !== 0) {
    let i = 0;
    while (got[i] === want[i]) i++;
    assert.fail(`${what}: first difference at byte ${i} (got ${got[i]}, want ${want[i]})`);
  }
}

/** Every outcome must be success or a PlatterError. */
export async function openAndReadTolerant(
  path: string,
  options: Record<string, string> = {},
): Promise<'ok' | string> {
  try {
    const d = await openRo(path, options);
    try {
      const n = Math.min(d.size, 16 << 20);
      await d.read(new Uint8Array(n), 0);
      if (d.size > n) await d.read(new Uint8Array(4096), d.size - 4096);
      await d.extents(0, Math.min(d.size, 1 << 30));
      await d.info();
      await d.features.check?.({ repair: 'none' });
    } finally {
      await d.close();
    }
    return 'ok';
  } catch (e) {
    if (isPlatterError(e)) return e.code;
    throw e;
  }
}

/** A tiny deterministic PRNG for mutation tests. */
export function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

/** Writes `model` as a sparse raw file (only its non-zero MiBs are written). */
export function sparseRaw(path: string, model: Uint8Array): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, model.length);
    const step = 1 << 20;
    for (let p = 0; p < model.length; p += step) {
      const chunk = model.subarray(p, Math.min(model.length, p + step));
      if (!isAllZero(chunk)) writeSync(fd, chunk, 0, chunk.length, p);
    }
  } finally {
    closeSync(fd);
  }
}

/** qemu reads `path` as exactly `model`: qemu-img compare (strict sizes) against a sparse raw copy of the model. */
export function assertQemuSame(
  dir: string,
  path: string,
  fmt: string,
  model: Uint8Array,
  what: string,
): void {
  const raw = join(dir, `model-${Math.random().toString(36).slice(2)}.raw`);
  sparseRaw(raw, model);
  const size = qemuSize(path, fmt);
  if (size !== model.length)
    throw new Error(`${what}: qemu-img sees ${size} bytes, the model has ${model.length}`);
  const r = run('qemu-img', ['compare', '-f', fmt, '-F', 'raw', path, raw]);
  if (r.status !== 0) throw new Error(`${what}: qemu-img compare: ${r.stdout}${r.stderr}`);
}
