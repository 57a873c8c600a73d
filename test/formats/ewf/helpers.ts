/** Shared pieces of the EWF tests: a source with random, zero and repeated areas; ewfacquire; whole-disk hashing. */
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Disk } from '../../../src/core/disk.js';
import { openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must } from '../../helpers/peers.js';

/** random 1 MiB, zeros 1 MiB, a repeated pattern 1 MiB, random tail (odd chunk count). */
export function makeSource(dir: string, name = 'src.raw', tailSectors = 300): { path: string; data: Buffer } {
  const data = Buffer.concat([
    randomBytes(1 << 20),
    Buffer.alloc(1 << 20),
    Buffer.alloc(1 << 20, 'abcdefgh'),
    randomBytes(tailSectors * 512),
  ]);
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, data };
}

export function ewfacquire(src: string, target: string, args: string[]): void {
  must('ewfacquire', ['-q', '-u', '-t', target, ...args, src]);
}

export async function readAll(disk: Disk): Promise<Buffer> {
  const out = Buffer.alloc(disk.size);
  const step = 1 << 20;
  for (let o = 0; o < disk.size; o += step)
    await disk.read(out.subarray(o, Math.min(disk.size, o + step)), o);
  return out;
}

export const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex');
export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export function openRo(path: string, format?: string): Promise<Disk> {
  return openImage(nodeHost, path, { readOnly: true, format });
}
