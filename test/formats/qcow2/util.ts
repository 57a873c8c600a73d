/** Helpers for the qcow2 tests: open/create through platter, patterns, reading whole disks. */
import { readFileSync } from 'node:fs';
import type { Disk } from '../../../src/core/disk.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, run } from '../../helpers/peers.js';

export const MiB = 1 << 20;

export function openRead(path: string, format?: string): Promise<Disk> {
  return openImage(nodeHost, path, { readOnly: true, format });
}

export function openWrite(path: string, options: Record<string, string> = {}): Promise<Disk> {
  return openImage(nodeHost, path, { readOnly: false, options });
}

export function create(
  path: string,
  size: number | undefined,
  options: Record<string, string> = {},
  backing?: { name: string; format?: string },
): Promise<void> {
  return createImage(nodeHost, path, { format: 'qcow2', size, options, backing, force: true });
}

/** Deterministic bytes (a cheap LCG), different per seed. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

export async function readAll(d: Disk): Promise<Buffer> {
  const buf = new Uint8Array(d.size);
  for (let off = 0; off < d.size; off += 4 * MiB) {
    await d.read(buf.subarray(off, Math.min(d.size, off + 4 * MiB)), off);
  }
  return Buffer.from(buf);
}

/** The peer's view of an image's content: qemu-img convert -O raw. */
export function qemuRaw(path: string, out: string): Buffer {
  must('qemu-img', ['convert', '-O', 'raw', path, out]);
  return readFileSync(out);
}

/** qemu-img check --output=json, with its exit status. */
export function qemuCheck(path: string): { status: number; json: Record<string, unknown> } {
  const r = run('qemu-img', ['check', '--output=json', path]);
  return { status: r.status, json: r.stdout.trim() ? JSON.parse(r.stdout) : {} };
}
