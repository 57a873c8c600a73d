/**
 * platter's NBD server (in process) against the peers: nbdinfo reads the
 * handshake and the allocation map, nbdcopy reads the content, qemu-io writes
 * through it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { stack } from '../../src/core/chain.js';
import { type Disk, toDisk } from '../../src/core/disk.js';
import { zeroDisk } from '../../src/core/zeros.js';
import { cow } from '../../src/layers/cow.js';
import { readonly } from '../../src/layers/readonly.js';
import { needPeers } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { stopChild, waitFor } from '../helpers/wait.js';
import { mustAsync, runAsync, serveDisk } from './helpers.js';

const MiB = 1 << 20;

/** A memory disk whose extents are data at 1-2 MiB, zero at 4-5 MiB and hole elsewhere. */
async function patterned(size = 8 * MiB): Promise<{ disk: Disk; content: Uint8Array }> {
  const disk = stack(toDisk(cow(size), { name: 'mem', readOnly: false }), zeroDisk(size));
  const content = new Uint8Array(size);
  const data = randomBytes(MiB);
  await disk.write(data, MiB);
  content.set(data, MiB);
  await disk.write(randomBytes(MiB), 4 * MiB);
  await disk.writeZeroes(4 * MiB, MiB);
  return { disk, content };
}

describe('nbd server', () => {
  const dir = tempDir();

  it('nbdinfo --json sees size, flags, structured replies and base:allocation', async (t) => {
    if (!needPeers(t, 'nbdinfo')) return;
    const { disk } = await patterned();
    const s = await serveDisk(disk, dir, { exportName: 'disk0', description: 'patterned' });
    try {
      const info = JSON.parse(await mustAsync('nbdinfo', ['--json', s.uri]));
      const e = info.exports[0];
      assert.equal(info.protocol, 'newstyle-fixed');
      assert.equal(info.structured, true);
      assert.equal(e['export-size'], 8 * MiB);
      assert.equal(e['export-name'], 'disk0');
      assert.equal(e.is_read_only, false);
      for (const k of [
        'can_flush',
        'can_fua',
        'can_trim',
        'can_zero',
        'can_fast_zero',
        'can_cache',
        'can_multi_conn',
        'can_df',
      ]) {
        assert.equal(e[k], true, k);
      }
      assert.deepEqual(e.contexts, ['base:allocation']);
      assert.equal(e.block_size_maximum, 32 * MiB);
      assert.equal(e.block_size_preferred, 4096, 'writable: small writes are no read-modify-write');
      const list = await runAsync('nbdinfo', ['--list', '--json', s.uri]);
      assert.equal(list.status, 0, list.stderr);
      assert.deepEqual(
        JSON.parse(list.stdout).exports.map((x: { 'export-name': string }) => x['export-name']),
        ['disk0'],
      );
    } finally {
      await s.stop();
      await disk.close();
    }
  });

  it('a wrong export name is refused; the right one served', async (t) => {
    if (!needPeers(t, 'nbdinfo')) return;
    const { disk } = await patterned();
    const s = await serveDisk(disk, dir, { exportName: 'right' });
    try {
      const bad = await runAsync('nbdinfo', [
        '--size',
        s.uri.replace('nbd+unix:///right', 'nbd+unix:///wrong'),
      ]);
      assert.notEqual(bad.status, 0);
      assert.match(bad.stderr, /no export named 'wrong'/);
      assert.equal((await mustAsync('nbdinfo', ['--size', s.uri])).trim(), String(8 * MiB));
    } finally {
      await s.stop();
      await disk.close();
    }
  });

  it('nbdinfo --map matches the extents: data 0, zero and hole HOLE|ZERO', async (t) => {
    if (!needPeers(t, 'nbdinfo')) return;
    const { disk } = await patterned();
    const s = await serveDisk(disk, dir);
    try {
      const map = JSON.parse(await mustAsync('nbdinfo', ['--map', '--json', s.uri])) as Array<{
        offset: number;
        length: number;
        type: number;
      }>;
      assert.deepEqual(
        map.map(({ offset, length, type }) => ({ offset, length, type })),
        [
          { offset: 0, length: MiB, type: 3 },
          { offset: MiB, length: MiB, type: 0 },
          { offset: 2 * MiB, length: 6 * MiB, type: 3 },
        ],
      );
      const exts = await disk.extents(0, disk.size);
      assert.deepEqual(
        exts.map((e) => e.status),
        ['hole', 'data', 'hole', 'zero', 'hole'],
        'the disk itself distinguishes zero from hole',
      );
    } finally {
      await s.stop();
      await disk.close();
    }
  });

  it('nbdcopy reads the export byte-identically (sparse reads with hole chunks)', async (t) => {
    if (!needPeers(t, 'nbdcopy')) return;
    const { disk, content } = await patterned();
    const s = await serveDisk(disk, dir);
    try {
      const out = join(dir, 'copy.raw');
      await mustAsync('nbdcopy', ['--requests=16', '--connections=2', s.uri, out]);
      assert.equal(readFileSync(out).equals(Buffer.from(content)), true);
      rmSync(out);
    } finally {
      await s.stop();
      await disk.close();
    }
  });

  it('a read-only export prefers 2 MiB requests: nbdcopy uses them and reads byte-identically', async (t) => {
    if (!needPeers(t, 'nbdcopy', 'nbdinfo')) return;
    const { disk, content } = await patterned(24 * MiB);
    const s = await serveDisk(readonly(disk), dir);
    try {
      const e = JSON.parse(await mustAsync('nbdinfo', ['--json', s.uri])).exports[0];
      assert.equal(e.is_read_only, true);
      assert.equal(e.block_size_preferred, 2 * MiB);
      assert.equal(e.block_size_maximum, 32 * MiB);
      // nbdcopy's requests are the preferred size: large reads, split at the holes.
      const out = join(dir, 'copy-ro.raw');
      await mustAsync('nbdcopy', [s.uri, out]);
      assert.equal(readFileSync(out).equals(Buffer.from(content)), true);
      // Without block status: every byte travels as data and hole chunks.
      await mustAsync('nbdcopy', ['--no-extents', s.uri, out]);
      assert.equal(readFileSync(out).equals(Buffer.from(content)), true);
      rmSync(out);
    } finally {
      await s.stop();
      await disk.close();
    }
  });

  it('qemu-io writes, zeroes and FUA writes land in the disk', async (t) => {
    if (!needPeers(t, 'qemu-io')) return;
    const size = 8 * MiB;
    const disk = stack(toDisk(cow(size), { name: 'mem', readOnly: false }), zeroDisk(size));
    const s = await serveDisk(disk, dir);
    try {
      await mustAsync('qemu-io', [
        '-f',
        'raw',
        '-c',
        'write -P 0x11 0 1M',
        '-c',
        'write -P 0x22 -f 1000 3000',
        '-c',
        'write -z 4096 8192',
        '-c',
        'write -z -u 2M 1M',
        '-c',
        'flush',
        s.uri,
      ]);
      const got = new Uint8Array(3 * MiB);
      await disk.read(got, 0);
      const want = new Uint8Array(3 * MiB);
      want.fill(0x11, 0, MiB);
      want.fill(0x22, 1000, 4000);
      want.fill(0, 4096, 4096 + 8192);
      assert.equal(Buffer.from(got).equals(Buffer.from(want)), true);
    } finally {
      await s.stop();
      await disk.close();
    }
  });

  it('a read-only export refuses writes with EPERM and says so in its flags', async (t) => {
    if (!needPeers(t, 'qemu-io', 'nbdinfo')) return;
    const { disk } = await patterned();
    const s = await serveDisk(readonly(disk), dir);
    try {
      const info = JSON.parse(await mustAsync('nbdinfo', ['--json', s.uri])).exports[0];
      assert.equal(info.is_read_only, true);
      assert.equal(info.can_trim, false);
      const w = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write 0 512', s.uri]);
      assert.match(w.stdout + w.stderr, /read-only|not permitted|permission denied/i);
      const before = new Uint8Array(512);
      await disk.read(before, 0);
      assert.ok(
        before.every((b) => b === 0),
        'nothing was written',
      );
    } finally {
      await s.stop();
      await disk.close();
    }
  });

  it('--shared 1: a second client waits until the first leaves', async (t) => {
    if (!needPeers(t, 'nbdinfo', 'qemu-io')) return;
    const { disk } = await patterned();
    const s = await serveDisk(disk, dir, { maxClients: 1 });
    const { spawn } = await import('node:child_process');
    // The first client stays connected until it is stopped; the order of events,
    // not a clock, shows that the second was held back.
    const first = spawn('qemu-io', ['-r', '-f', 'raw', '-c', 'sleep 3600000', s.uri], { stdio: 'ignore' });
    try {
      await waitFor('the first client connected', () => s.server.clients === 1, { child: first });
      let secondDone = false;
      const second = mustAsync('nbdinfo', ['--size', s.uri]).finally(() => {
        secondDone = true;
      });
      await waitFor('the second client queued', () => s.server.queuedClients === 1);
      assert.equal(s.server.clients, 1, 'never two sessions at once');
      assert.equal(secondDone, false, 'the second client was not served while the first was connected');
      await stopChild(first);
      assert.equal((await second).trim(), String(8 * MiB));
    } finally {
      await stopChild(first);
      await s.stop();
      await disk.close();
    }
  });
});
