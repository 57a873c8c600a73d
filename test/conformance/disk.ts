/**
 * testDisk(make): the suite every Disk must pass (formats, layers, chains, the
 * NBD client). `make(size)` returns a fresh, writable, all-zero disk of at least
 * `size` bytes (its `size` is used), and optionally a way to reopen it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import type { Disk, Extent } from '../../src/core/disk.js';
import { PlatterError } from '../../src/core/errors.js';

export interface MadeDisk {
  disk: Disk;
  /** Close and open again (read-only), to prove the data was persisted. */
  reopen?: () => Promise<Disk>;
  cleanup?: () => Promise<void>;
}

export interface ConformanceOptions {
  /** Requested size; default 4 MiB + 3 sectors (odd on purpose). */
  size?: number;
}

function checkTiling(exts: Extent[], offset: number, length: number): void {
  let pos = offset;
  for (const e of exts) {
    assert.equal(e.offset, pos, 'extents must be contiguous');
    assert.ok(e.length > 0, 'extents must be non-empty');
    assert.ok(['data', 'zero', 'hole'].includes(e.status));
    pos += e.length;
  }
  assert.equal(pos, offset + length, 'extents must tile the range exactly');
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof PlatterError && e.code === code);
}

export function testDisk(
  name: string,
  make: (size: number) => Promise<MadeDisk>,
  opts: ConformanceOptions = {},
): void {
  const want = opts.size ?? 4 * 1024 * 1024 + 3 * 512;

  describe(`conformance: ${name}`, () => {
    it('starts as zeros and extents tile the disk', async () => {
      const m = await make(want);
      try {
        const { disk } = m;
        const buf = new Uint8Array(Math.min(disk.size, 1 << 20));
        await disk.read(buf, 0);
        assert.ok(
          buf.every((b) => b === 0),
          'new disk reads zeros',
        );
        const tail = new Uint8Array(1);
        await disk.read(tail, disk.size - 1);
        assert.equal(tail[0], 0, 'last byte reads zero');
        const exts = await disk.extents(0, disk.size);
        checkTiling(exts, 0, disk.size);
      } finally {
        await m.disk.close();
        await m.cleanup?.();
      }
    });

    it('unaligned, straddling and last-byte writes read back, also after reopen', async () => {
      const m = await make(want);
      const { disk } = m;
      const size = disk.size;
      const model = new Uint8Array(size);
      const writes: Array<[number, number]> = [
        [0, 512],
        [1, 1],
        [511, 2],
        [65535, 3],
        [65536 - 100, 70000],
        [Math.floor(size / 2) - 7, 4099],
        [size - 1, 1],
        [size - 4096 - 13, 4096],
        [1 << 20, 1 << 20],
      ];
      try {
        for (const [off, len] of writes) {
          if (off + len > size) continue;
          const data = randomBytes(len);
          await disk.write(data, off);
          model.set(data, off);
        }
        // Writing zeros over part of the data.
        await disk.writeZeroes(100, 1000);
        model.fill(0, 100, 1100);
        await disk.flush();
        const check = async (d: Disk): Promise<void> => {
          for (const [off, len] of [
            [0, size],
            [3, 70001],
            [size - 600, 600],
          ] as const) {
            const got = new Uint8Array(len);
            await d.read(got, off);
            assert.ok(
              Buffer.from(got).equals(Buffer.from(model.subarray(off, off + len))),
              `content at ${off}+${len}`,
            );
          }
          const exts = await d.extents(0, size);
          checkTiling(exts, 0, size);
          for (const e of exts) {
            if (e.status === 'data') continue;
            const part = model.subarray(e.offset, e.offset + e.length);
            assert.ok(
              part.every((b) => b === 0),
              `${e.status} extent at ${e.offset}+${e.length} must read zeros`,
            );
          }
          const sub = await d.extents(3, 1000);
          checkTiling(sub, 3, 1000);
        };
        await check(disk);
        if (m.reopen) {
          await disk.close();
          const again = await m.reopen();
          try {
            await check(again);
          } finally {
            await again.close();
          }
        } else {
          await disk.close();
        }
      } finally {
        await m.disk.close();
        await m.cleanup?.();
      }
    });

    it('refuses ranges past the end and use after close', async () => {
      const m = await make(want);
      const { disk } = m;
      try {
        await expectCode(disk.read(new Uint8Array(2), disk.size - 1), 'ERANGE');
        await expectCode(disk.write(new Uint8Array(1), disk.size), 'ERANGE');
        await expectCode(disk.extents(0, disk.size + 1), 'ERANGE');
        await expectCode(disk.read(new Uint8Array(1), -1), 'ERANGE');
        await disk.close();
        await expectCode(disk.read(new Uint8Array(1), 0), 'ECLOSED');
      } finally {
        await m.cleanup?.();
      }
    });

    it('a read-only reopen refuses writes', async (t) => {
      const m = await make(want);
      if (!m.reopen) {
        await m.disk.close();
        await m.cleanup?.();
        t.skip('no reopen for this disk');
        return;
      }
      await m.disk.close();
      const ro = await m.reopen();
      try {
        assert.equal(ro.readOnly, true);
        await expectCode(ro.write(new Uint8Array(1), 0), 'EREADONLY');
      } finally {
        await ro.close();
        await m.cleanup?.();
      }
    });
  });
}
