/** Shared pieces of the VHDX tests: temp images, qemu round trips, whole-disk reads. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, ftruncateSync, mkdirSync, openSync, readdirSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Disk } from '../../../src/core/disk.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, run } from '../../helpers/peers.js';
import { waitFor } from '../../helpers/wait.js';

export const MiB = 1 << 20;

export async function readAll(d: Disk): Promise<Buffer> {
  const buf = new Uint8Array(d.size);
  await d.read(buf, 0);
  return Buffer.from(buf);
}

export async function openRead(path: string): Promise<Disk> {
  return openImage(nodeHost, path, { readOnly: true });
}

/** `unsafe`: open with cache=unsafe (no flushes), for tests that do not test durability. */
export async function openWrite(path: string, unsafe = false): Promise<Disk> {
  return openImage(nodeHost, path, { readOnly: false, options: unsafe ? { cache: 'unsafe' } : {} });
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

/** Writes `buf` to `path` leaving all-zero MiBs as holes. */
export function writeSparse(path: string, buf: Uint8Array): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, buf.length);
    for (let off = 0; off < buf.length; off += MiB) {
      const part = buf.subarray(off, Math.min(buf.length, off + MiB));
      if (part.some((b) => b !== 0)) writeSync(fd, part, 0, part.length, off);
    }
  } finally {
    closeSync(fd);
  }
}

/** Mounts `image` with vhdimount and returns the bytes of its top layer. */
export async function vhdimountRead(image: string): Promise<Buffer> {
  const mnt = `${image}.mnt`;
  mkdirSync(mnt, { recursive: true });
  // -v keeps it in the foreground, logging to stderr: kept for the error, never left to fill a pipe.
  const p = spawn('vhdimount', ['-v', image, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  p.stderr?.on('data', (d) => {
    if (stderr.length < 1 << 16) stderr += d;
  });
  try {
    await waitFor(`vhdimount ${image}`, () => readdirSync(mnt).length > 0, {
      child: p,
      stderr: () => stderr,
    });
    const files = readdirSync(mnt).sort();
    assert.ok(files.length > 0, 'vhdimount exposed no file');
    return readFileSync(join(mnt, files[files.length - 1]));
  } finally {
    run('umount', [mnt]);
    p.kill();
  }
}
