/**
 * acquire from real failing and real block sources: nbdkit (ddrescue and error
 * filters) exposed as a file through nbdfuse, whose reads of chosen sectors
 * return EIO; and a read-only loop device.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { nbdkitAsFile } from '../helpers/nbdfuse.js';
import { must, needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

const dir = tempDir('platter-acq-src-');
const hex = (alg: string, b: Uint8Array): string => createHash(alg).update(b).digest('hex');

const canFuse = (): boolean => existsSync('/dev/fuse') && process.getuid?.() === 0;

describe('acquire from failing sources', () => {
  it('ddrescue-filter source: the log and the E01 error2 name exactly the injected sectors', async (t) => {
    if (!needPeers(t, 'nbdkit', 'nbdfuse', 'fusermount3', 'ewfinfo', 'ewfverify')) return;
    if (!canFuse()) return t.skip('needs root and /dev/fuse');
    const data = randomBytes(4 << 20);
    const src = join(dir, 'truth.raw');
    writeFileSync(src, data);
    // ddrescue mapfile: '-' areas are bad sectors; sector 1000 and sectors 6640..6642.
    const map = join(dir, 'truth.map');
    writeFileSync(
      map,
      [
        '# Mapfile',
        '0x0 + 1',
        '0x00000000 0x0007D000 +',
        '0x0007D000 0x00000200 -',
        '0x0007D200 0x002C0E00 +',
        '0x0033E000 0x00000600 -',
        '0x0033E600 0x000C1A00 +',
        '',
      ].join('\n'),
    );
    const disk = await nbdkitAsFile(dir, ['--filter=ddrescue', 'file', src, `ddrescue-mapfile=${map}`]);
    try {
      const dst = join(dir, 'failing');
      const r = platter([
        'acquire',
        '-O',
        'ewf',
        '--json',
        '-r',
        '1',
        '-a',
        'md5,sha1,sha256',
        disk.path,
        dst,
      ]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /warning: 2 unreadable range\(s\), 2048 bytes \(4 sectors\)/);
      const rec = JSON.parse(r.stdout);
      assert.deepEqual(rec.unreadable, [
        { offset: 1000 * 512, length: 512 },
        { offset: 6640 * 512, length: 1536 },
      ]);
      const expect = Buffer.from(data);
      expect.fill(0, 1000 * 512, 1001 * 512);
      expect.fill(0, 6640 * 512, 6643 * 512);
      assert.equal(rec.hashes.md5, hex('md5', expect));
      assert.equal(rec.hashes.sha256, hex('sha256', expect));
      assert.equal(rec.verification.result, 'match');
      const e01 = `${dst}.E01`;
      const errs = must('ewfinfo', ['-e', e01]);
      assert.match(errs, /total number: 2/);
      assert.match(errs, /at sector\(s\): 1000 - 1000 number: 1/);
      assert.match(errs, /at sector\(s\): 6640 - 6642 number: 3/);
      assert.equal(run('ewfverify', ['-q', e01]).status, 0);
      assert.match(must('cat', [`${e01}.log`]), /offset 3399680 length 1536 \(sectors 6640-6642\)/);
    } finally {
      await disk.unmount();
    }
  });

  it('error-filter source failing every read: all zeros, one unreadable range, still verified', async (t) => {
    if (!needPeers(t, 'nbdkit', 'nbdfuse', 'fusermount3')) return;
    if (!canFuse()) return t.skip('needs root and /dev/fuse');
    const src = join(dir, 'err.raw');
    writeFileSync(src, randomBytes(128 << 10));
    const disk = await nbdkitAsFile(dir, ['--filter=error', 'file', src, 'error-pread-rate=100%']);
    try {
      const dst = join(dir, 'allbad.raw');
      const r = platter(['acquire', '--json', '-r', '0', disk.path, dst]);
      assert.equal(r.status, 0, r.stderr);
      const rec = JSON.parse(r.stdout);
      assert.deepEqual(rec.unreadable, [{ offset: 0, length: 128 << 10 }]);
      assert.equal(rec.hashes.sha256, hex('sha256', Buffer.alloc(128 << 10)));
      assert.equal(rec.verification.result, 'match');
    } finally {
      await disk.unmount();
    }
  });

  it('nbdkit export over nbd+unix://: bad sectors from the ddrescue filter, exact over NBD too', async (t) => {
    if (!needPeers(t, 'nbdkit')) return;
    const data = randomBytes(1 << 20);
    const src = join(dir, 'nbd.raw');
    writeFileSync(src, data);
    const map = join(dir, 'nbd.map');
    writeFileSync(
      map,
      ['0x0 + 1', '0x00000000 0x00010000 +', '0x00010000 0x00000400 -', '0x00010400 0x000EFC00 +', ''].join(
        '\n',
      ),
    );
    const sock = join(dir, 'nbd.sock');
    const pidFile = join(dir, 'nbdkit.pid');
    const errPath = join(dir, 'nbdkit.stderr');
    const errFd = openSync(errPath, 'w');
    // -P: nbdkit writes the pid file once it accepts connections (the socket file exists earlier).
    const server = spawn(
      'nbdkit',
      [
        '-U',
        sock,
        '-P',
        pidFile,
        '-f',
        '--exit-with-parent',
        '--filter=ddrescue',
        'file',
        src,
        `ddrescue-mapfile=${map}`,
      ],
      { stdio: ['ignore', 'ignore', errFd] },
    );
    closeSync(errFd);
    try {
      await waitFor('nbdkit', () => existsSync(pidFile), {
        child: server,
        stderr: () => readFileSync(errPath, 'utf8'),
      });
      const r = platter([
        'acquire',
        '--json',
        '-r',
        '0',
        `nbd+unix:///?socket=${sock}`,
        join(dir, 'from-nbd.raw'),
      ]);
      assert.equal(r.status, 0, r.stderr);
      const rec = JSON.parse(r.stdout);
      assert.deepEqual(rec.unreadable, [{ offset: 0x10000, length: 1024 }]);
      const expect = Buffer.from(data);
      expect.fill(0, 0x10000, 0x10400);
      assert.equal(rec.hashes.sha256, hex('sha256', expect));
      assert.equal(rec.verification.result, 'match');
    } finally {
      server.kill('SIGTERM');
    }
  });

  it('loop device: block-device identity, O_DIRECT, hashes equal the backing file', (t) => {
    if (!needPeers(t, 'losetup', 'md5sum')) return;
    const file = join(dir, 'loop.raw');
    writeFileSync(file, randomBytes(2 << 20));
    const l = run('losetup', ['-f', '--show', '-r', file]);
    if (l.status !== 0) return t.skip(`losetup: ${l.stderr.trim()}`);
    const dev = l.stdout.trim();
    try {
      const r = platter(['acquire', '--json', dev, join(dir, 'loop-img.raw')]);
      assert.equal(r.status, 0, r.stderr);
      const rec = JSON.parse(r.stdout);
      assert.equal(rec.source.blockDevice, true);
      assert.equal(rec.source.size, 2 << 20);
      assert.equal(rec.source.writable, false);
      assert.equal(rec.hashes.md5, must('md5sum', [file]).split(' ')[0]);
      assert.equal(rec.verification.result, 'match');
    } finally {
      run('losetup', ['-d', dev]);
    }
  });
});
