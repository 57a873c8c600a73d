/**
 * Seeded mutations of real images (qemu-made dynamic and fixed, and a platter
 * image with an unreplayed log): flipped bytes (with the header, region table
 * and log entry checksums recomputed half of the time, so the damage reaches
 * the fields behind them), and truncations. Every open, read, extents, check
 * and write must succeed or fail with a PlatterError, never another exception.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isPlatterError } from '../../../src/core/errors.js';
import { crcWithHole } from '../../../src/formats/vhdx/crc32c.js';
import { vhdxTestHooks } from '../../../src/formats/vhdx/image.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { create, MiB, openRead, openWrite, pattern } from './util.js';

const dir = tempDir('platter-vhdx-mut-');
const KiB = 1024;

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** Recomputes the CRC-32C at +4 over `len` bytes at `at`, when the region is inside the file. */
function fixCrc(b: Buffer, at: number, len: number): void {
  if (at + len <= b.length) b.writeUInt32LE(crcWithHole(b.subarray(at, at + len), 4), at + 4);
}

function mutate(src: Buffer, r: () => number): Buffer {
  const b = Buffer.from(src);
  const kind = Math.floor(r() * 7);
  const flip = (from: number, span: number, count: number): void => {
    for (let i = 0; i < count; i++) {
      const at = from + Math.floor(r() * Math.min(span, b.length - from));
      if (at < b.length) b[at] ^= 1 << Math.floor(r() * 8);
    }
  };
  const fix = r() < 0.5;
  const count = 1 + Math.floor(r() * 6);
  switch (kind) {
    case 0: // headers
      for (const h of [64 * KiB, 128 * KiB]) {
        if (r() < 0.7) flip(h, 80, count);
        if (fix) fixCrc(b, h, 4 * KiB);
      }
      break;
    case 1: // region tables
      for (const t of [192 * KiB, 256 * KiB]) {
        flip(t, 16 + 32 * 3, count);
        if (fix) fixCrc(b, t, 64 * KiB);
      }
      break;
    case 2: {
      // the log's first entry (platter and qemu put the log at 1 MiB)
      flip(MiB, 8 * KiB, count);
      const len = b.readUInt32LE(MiB + 8);
      if (fix && len > 0 && len <= 4 * MiB) fixCrc(b, MiB, len);
      break;
    }
    case 3: // metadata, BAT and the rest of the first 5 MiB
      flip(MiB, 4 * MiB, count * 4);
      break;
    case 4: // anywhere
      flip(0, b.length, count * 8);
      break;
    case 5:
      return b.subarray(0, Math.floor(r() * b.length));
    default: // metadata table entries of qemu (3 MiB) and platter (1 MiB + log + 0) layouts
      flip(3 * MiB, 256, count);
      flip(2 * MiB, 256, count);
      break;
  }
  return b;
}

async function exercise(path: string, write: boolean): Promise<void> {
  const d = write ? await openWrite(path, true) : await openRead(path);
  try {
    const n = Math.min(d.size, 8 * MiB);
    const buf = new Uint8Array(n);
    await d.read(buf, 0);
    if (d.size > 4096) await d.read(new Uint8Array(4096), d.size - 4096);
    await d.extents(0, Math.min(d.size, 64 * MiB));
    await d.info();
    await d.features.check?.({ repair: write ? 'all' : 'none' });
    if (write && d.size > MiB) {
      await d.write(pattern(5000, 3), Math.floor(d.size / 2) - 77);
      await d.flush();
    }
  } finally {
    await d.close();
  }
}

describe('vhdx seeded mutations', () => {
  it('every outcome is success or a PlatterError', { timeout: 120_000 }, async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const bases: Buffer[] = [];
    for (const opts of ['block_size=1M', 'subformat=fixed,block_size=1M']) {
      const p = join(dir, `base-${bases.length}.vhdx`);
      must('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', opts, p, '4M']);
      must('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x3c 1000 1500000', '-c', 'write -P 0x3d 3M 4096', p]);
      bases.push(readFileSync(p));
    }
    // A platter image whose last transaction stopped after its log entry.
    const logged = join(dir, 'logged.vhdx');
    await create(logged, 4 * MiB, { block_size: '1M' });
    const d = await openWrite(logged);
    await d.write(pattern(MiB + 3000, 1), 100);
    vhdxTestHooks.afterLogWritten = () => {
      throw new Error('stop after the log entry');
    };
    try {
      await assert.rejects(d.flush(), /stop after the log entry/);
    } finally {
      vhdxTestHooks.afterLogWritten = undefined;
      await d.close();
    }
    bases.push(readFileSync(logged));

    const r = rng(20261125);
    const outcomes = { ok: 0, refused: 0 };
    const target = join(dir, 'mutant.vhdx');
    for (let i = 0; i < 72; i++) {
      const base = bases[i % bases.length];
      const m = mutate(base, r);
      for (const write of i % 3 === 0 ? [false, true] : [false]) {
        writeFileSync(target, m);
        try {
          await exercise(target, write);
          outcomes.ok++;
        } catch (e) {
          if (!isPlatterError(e)) {
            throw new Error(
              `mutation ${i} (${write ? 'write' : 'read'}): not a PlatterError: ${(e as Error)?.stack}`,
            );
          }
          outcomes.refused++;
        }
      }
    }
    // Both outcomes occur: the mutations reach past the checksums.
    assert.ok(outcomes.ok > 10 && outcomes.refused > 10, JSON.stringify(outcomes));
  });
});
