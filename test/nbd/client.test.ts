/**
 * The NBD client (a Storage) against platter's own server, qemu-nbd and
 * nbdkit (memory, file, the error filter); the conformance suite over a raw
 * disk reached through it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { stack } from '../../src/core/chain.js';
import { type Disk, toDisk } from '../../src/core/disk.js';
import { PlatterError } from '../../src/core/errors.js';
import { zeroDisk } from '../../src/core/zeros.js';
import { createImage, openImage } from '../../src/formats/open.js';
import { cow } from '../../src/layers/cow.js';
import { openNbd, parseNbdUri } from '../../src/nbd/client.js';
import { nodeHost } from '../../src/storage/host.js';
import { testDisk } from '../conformance/disk.js';
import { hasPeer, must, needPeers } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { runAsync, serveDisk, socketPath, startNbdkit, startQemuNbd } from './helpers.js';

const MiB = 1 << 20;
const dir = tempDir();
let n = 0;

function sparseFile(size: number): string {
  const path = join(dir, `c${n++}.raw`);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  return path;
}

const isCode = (code: string, msg?: RegExp) => (e: unknown) =>
  e instanceof PlatterError && e.code === code && (!msg || msg.test(e.message));

// The conformance suite through the client, against platter's server (in process)...
testDisk('raw over nbd (platter server)', async (size) => {
  const file = sparseFile(size);
  const served = await openImage(nodeHost, file, { format: 'raw', readOnly: false });
  const s = await serveDisk(served, dir);
  const disk = await openImage(nodeHost, s.uri, { format: 'raw', readOnly: false });
  return {
    disk,
    reopen: () => openImage(nodeHost, s.uri, { format: 'raw', readOnly: true }),
    cleanup: async () => {
      await s.stop();
      await served.close();
    },
  };
});

// ...and against qemu-nbd (skipped loudly when qemu-nbd is missing).
if (hasPeer('qemu-nbd')) {
  testDisk('raw over nbd (qemu-nbd)', async (size) => {
    const file = sparseFile(size);
    const q = await startQemuNbd(socketPath(dir), ['-f', 'raw', '-e', '4', file]);
    try {
      const disk = await openImage(nodeHost, q.uri, { format: 'raw', readOnly: false });
      return {
        disk,
        reopen: () => openImage(nodeHost, q.uri, { format: 'raw', readOnly: true }),
        cleanup: async () => {
          await q.stop();
        },
      };
    } catch (e) {
      await q.stop();
      throw e;
    }
  });
}

describe('nbd client', () => {
  it('parses nbd:// and nbd+unix:// URIs; refuses nbds clearly', () => {
    assert.deepEqual(parseNbdUri('nbd://example.org/disk%201'), {
      address: { host: 'example.org', port: 10809 },
      exportName: 'disk 1',
    });
    assert.deepEqual(parseNbdUri('nbd://[::1]:1234'), {
      address: { host: '::1', port: 1234 },
      exportName: '',
    });
    assert.deepEqual(parseNbdUri('nbd+unix:///e?socket=/tmp/s.sock'), {
      address: { path: '/tmp/s.sock' },
      exportName: 'e',
    });
    assert.throws(() => parseNbdUri('nbds://host/x'), isCode('EUNSUPPORTED', /TLS/));
    assert.throws(() => parseNbdUri('nbd+unix:///x'), isCode('EINVAL', /socket=PATH/));
  });

  it('reads qemu-nbd byte-identically and sees its holes through block status', async (t) => {
    if (!needPeers(t, 'qemu-nbd', 'qemu-img', 'qemu-io')) return;
    const img = join(dir, 'q.qcow2');
    must('qemu-img', ['create', '-f', 'qcow2', img, '8M']);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x61 1M 1M', '-c', 'write -z 4M 1M', img]);
    const q = await startQemuNbd(socketPath(dir), ['-r', '-f', 'qcow2', img]);
    try {
      const s = await openNbd(q.uri, { write: false });
      try {
        assert.equal(await s.size(), 8 * MiB);
        const buf = new Uint8Array(8 * MiB);
        await s.read(buf, 0);
        const want = new Uint8Array(8 * MiB).fill(0x61, MiB, 2 * MiB);
        assert.equal(Buffer.from(buf).equals(Buffer.from(want)), true);
        const ext = await s.extents!(0, 8 * MiB);
        assert.deepEqual(ext, [
          { offset: 0, length: MiB, kind: 'hole' },
          { offset: MiB, length: MiB, kind: 'data' },
          { offset: 2 * MiB, length: 6 * MiB, kind: 'hole' },
        ]);
        await assert.rejects(s.write(new Uint8Array(1), 0), isCode('EREADONLY'));
      } finally {
        await s.close();
      }
    } finally {
      await q.stop();
    }
  });

  it('writes to nbdkit memory and reads back; discard zeroes; writing past the end is ENOSPC', async (t) => {
    if (!needPeers(t, 'nbdkit')) return;
    const k = await startNbdkit(socketPath(dir), ['memory', '4M']);
    try {
      const s = await openNbd(k.uri, { write: true });
      try {
        const data = randomBytes(3 * MiB + 17);
        await s.write(data, 1000);
        await s.discard!(2 * MiB, 4096);
        await s.flush();
        const got = new Uint8Array(data.length);
        await s.read(got, 1000);
        const want = Buffer.from(data);
        want.fill(0, 2 * MiB - 1000, 2 * MiB - 1000 + 4096);
        assert.equal(Buffer.from(got).equals(want), true);
        await assert.rejects(s.write(new Uint8Array(2), 4 * MiB - 1), isCode('ENOSPC', /past the end/));
        await assert.rejects(s.truncate(5 * MiB), isCode('ENOSPC'));
      } finally {
        await s.close();
      }
    } finally {
      await k.stop();
    }
  });

  it('reads nbdkit file byte-identically, several requests in flight', async (t) => {
    if (!needPeers(t, 'nbdkit')) return;
    const path = join(dir, 'k.raw');
    const content = randomBytes(6 * MiB);
    writeFileSync(path, content);
    const k = await startNbdkit(socketPath(dir), ['file', path]);
    try {
      const s = await openNbd(k.uri, { write: false });
      try {
        const pieces = Array.from({ length: 48 }, (_, i) => ({
          off: ((i * 7919) % 96) * 65536,
          len: 65536 + i,
        }));
        const bufs = await Promise.all(
          pieces.map(async (p) => {
            const len = Math.min(p.len, content.length - p.off);
            const b = new Uint8Array(len);
            await s.read(b, p.off);
            return { ...p, b };
          }),
        );
        for (const { off, b } of bufs) {
          assert.equal(Buffer.from(b).equals(content.subarray(off, off + b.length)), true, `read at ${off}`);
        }
      } finally {
        await s.close();
      }
    } finally {
      await k.stop();
    }
  });

  it("nbdkit's error filter: a clean EIO naming the offset", async (t) => {
    if (!needPeers(t, 'nbdkit')) return;
    const k = await startNbdkit(socketPath(dir), [
      '--filter=error',
      'memory',
      '4M',
      'error-pread=EIO',
      'error-pread-rate=100%',
    ]);
    try {
      const s = await openNbd(k.uri, { write: false });
      try {
        await assert.rejects(
          s.read(new Uint8Array(4096), 3 * MiB),
          isCode('EIO', /read of 4096 bytes at offset 3145728 failed: EIO/),
        );
        // The connection survives an error reply.
        assert.equal(await s.size(), 4 * MiB);
        await assert.rejects(s.read(new Uint8Array(512), 0), isCode('EIO', /offset 0 /));
      } finally {
        await s.close();
      }
    } finally {
      await k.stop();
    }
  });

  it('a refused export, a read-only export opened for writing, no server, a lost connection', async (t) => {
    const disk = stack(toDisk(cow(MiB), { name: 'm', readOnly: false }), zeroDisk(MiB));
    const s = await serveDisk(disk, dir, { exportName: 'yes', readOnly: true });
    try {
      const wrong = s.uri.replace('/yes?', '/no?');
      await assert.rejects(openNbd(wrong, { write: false }), isCode('ENOENT', /no such export.*'no'/));
      await assert.rejects(openNbd(s.uri, { write: true }), isCode('EREADONLY', /read-only/));
      await assert.rejects(
        openNbd(`nbd+unix:///?socket=${join(dir, 'nothing.sock')}`, { write: false }),
        isCode('ENOENT', /cannot connect/),
      );
    } finally {
      await s.stop();
      await disk.close();
    }
    if (!needPeers(t, 'nbdkit')) return;
    // nbdkit's delay filter holds the read while we kill the server under it.
    const k = await startNbdkit(socketPath(dir), ['--filter=delay', 'memory', '1M', 'rdelay=5']);
    try {
      const c = await openNbd(k.uri, { write: false });
      const pending = c.read(new Uint8Array(512), 0);
      k.proc.kill('SIGKILL');
      // EGONE, not EIO: no bad sector (rescue and acquire stop instead of recording one).
      await assert.rejects(pending, isCode('EGONE', /connection lost/));
      await assert.rejects(c.read(new Uint8Array(512), 0), isCode('EGONE'));
      await c.close();
    } finally {
      await k.stop();
    }
  });

  it('replies arrive out of order: a slow read does not hold back a fast one', async () => {
    const base = stack(toDisk(cow(MiB), { name: 'm', readOnly: false }), zeroDisk(MiB));
    await base.write(new Uint8Array(4096).fill(7), 0);
    let open!: () => void;
    const gate = new Promise<void>((r) => {
      open = r;
    });
    // Reads at offset 0 wait for the gate; everything else passes straight through.
    const gated: Disk = toDisk(
      {
        size: base.size,
        async read(buf, offset) {
          if (offset === 0) await gate;
          return base.read(buf, offset);
        },
        extents: (o, l) => base.extents(o, l),
      },
      { name: 'gated', readOnly: true },
    );
    const s = await serveDisk(gated, dir);
    const c = await openNbd(s.uri, { write: false });
    try {
      const order: string[] = [];
      const slow = c.read(new Uint8Array(512), 0).then(() => order.push('slow'));
      const fast = c.read(new Uint8Array(512), 65536).then(() => order.push('fast'));
      await fast;
      assert.deepEqual(order, ['fast']);
      open();
      await slow;
      assert.deepEqual(order, ['fast', 'slow']);
    } finally {
      open();
      await c.close();
      await s.stop();
      await base.close();
    }
  });

  it('an NBD export as a destination: platter creates a qcow2 inside nbdkit memory, qemu checks and reads it', async (t) => {
    if (!needPeers(t, 'nbdkit', 'qemu-img', 'qemu-io')) return;
    const k = await startNbdkit(socketPath(dir), ['memory', '16M']);
    try {
      await createImage(nodeHost, k.uri, { format: 'qcow2', size: 4 * MiB });
      const d = await openImage(nodeHost, k.uri, { format: 'qcow2', readOnly: false });
      await d.write(new Uint8Array(65536).fill(0x42), MiB);
      await d.close();
      const info = JSON.parse(must('qemu-img', ['info', '--output=json', k.uri]));
      assert.equal(info.format, 'qcow2');
      assert.equal(info['virtual-size'], 4 * MiB);
      must('qemu-img', ['check', k.uri]);
      const r = must('qemu-io', ['-r', '-c', 'read -P 0x42 1M 64k', '-c', 'read -P 0 0 1M', k.uri]);
      assert.doesNotMatch(r, /verification failed/);
    } finally {
      await k.stop();
    }
  });

  it('platter hash and convert take nbd:// sources (CLI, against qemu-nbd)', async (t) => {
    if (!needPeers(t, 'qemu-nbd')) return;
    const path = join(dir, 'h.raw');
    const content = Buffer.alloc(4 * MiB);
    randomBytes(MiB).copy(content, MiB);
    const fd = openSync(path, 'w');
    ftruncateSync(fd, content.length);
    writeSync(fd, content, MiB, MiB, MiB);
    closeSync(fd);
    const q = await startQemuNbd(socketPath(dir), ['-r', '-f', 'raw', '-e', '4', path]);
    try {
      const PLATTER = join(new URL('../..', import.meta.url).pathname, 'bin/platter');
      const viaNbd = await runAsync(process.execPath, [PLATTER, 'hash', q.uri]);
      const direct = await runAsync(process.execPath, [PLATTER, 'hash', '-U', path]);
      assert.equal(viaNbd.status, 0, viaNbd.stderr);
      assert.equal(viaNbd.stdout.split(' = ').pop(), direct.stdout.split(' = ').pop());
      assert.match(viaNbd.stdout, /= [0-9a-f]{64}/);
      const out = join(dir, 'h.out');
      const conv = await runAsync(process.execPath, [PLATTER, 'convert', '-O', 'raw', q.uri, out]);
      assert.equal(conv.status, 0, conv.stderr);
      assert.equal(readFileSync(out).equals(content), true);
    } finally {
      await q.stop();
    }
  });
});
