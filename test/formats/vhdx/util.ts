/** Shared pieces of the VHDX tests: temp images, qemu round trips, whole-disk reads. */
import { readFileSync } from 'node:fs';
import type { Disk } from '../../../src/core/disk.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must } from '../../helpers/peers.js';

export const MiB = 1 << 20;

export async function readAll(d: Disk): Promise<Buffer> {
  const buf = new Uint8Array(d.size);
  await d.read(buf, 0);
  return Buffer.from(buf);
}

export async function openRead(path: string): Promise<Disk> {
  return openImage(nodeHost, path, { readOnly: true });
}

export async function openWrite(path: string): Promise<Disk> {
  return openImage(nodeHost, path, { readOnly: false });
}

export async function create(
  path: string,
  size: number,
  options: Record<string, string> = {},
  backing?: string,
): Promise<void> {
  await createImage(nodeHost, path, {
    format: 'vhdx',
    size: backing ? undefined : size,
    options,
    backing: backing ? { name: backing, format: 'vhdx' } : undefined,
  });
}

/** The virtual content as qemu sees it. */
export function qemuRaw(path: string, out: string): Buffer {
  must('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', path, out]);
  return readFileSync(out);
}

/** A deterministic pseudo-random buffer (xorshift), for models the test computes itself. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
