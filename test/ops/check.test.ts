/**
 * platter check: qemu-img's exit statuses and meanings (0 clean, 1 could not
 * check, 2 corrupt, 3 leaks), agreement with `qemu-img check`, and repair.
 */
import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('platter-check-');
let n = 0;

/** A qcow2 image with data in the first two clusters; returns its path and the L2/data offsets. */
function image(): { path: string; l2: number; data: number } {
  const path = join(dir, `c${n++}.qcow2`);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', path, '4M']);
  must('qemu-io', ['-c', 'write -P 0x41 0 128k', path]);
  const b = readFileSync(path);
  const l1 = Number(b.readBigUInt64BE(40));
  const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const data = Number(b.readBigUInt64BE(l2) & 0x00fffffffffffe00n);
  return { path, l2, data };
}

function patch(path: string, at: number, bytes: number[]): void {
  const b = readFileSync(path);
  b.set(bytes, at);
  writeFileSync(path, b);
}

/** Offset of the refcount entry (16-bit) of the cluster at host offset `host`. */
function refcountEntry(path: string, host: number): number {
  const b = readFileSync(path);
  const rt = Number(b.readBigUInt64BE(48));
  const block = Number(b.readBigUInt64BE(rt));
  return block + (host / 65536) * 2;
}

describe('platter check', () => {
  it('a clean image: exit 0, text and JSON', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path } = image();
    const r = platter(['check', path]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /No errors were found on the image/);
    const j = platter(['check', '--json', path]);
    assert.equal(j.status, 0);
    const res = JSON.parse(j.stdout);
    assert.equal(res.corruptions, 0);
    assert.equal(res.leaks, 0);
    assert.equal(res.format, 'qcow2');
  });

  it("'Image end offset' is the end of the last cluster in use, as qemu-img check says", (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const end = (out: string) => /^Image end offset: (\d+)$/m.exec(out)?.[1];
    const tail = image().path; // a file longer than what it uses
    truncateSync(tail, 4 << 20);
    const snap = image().path; // a snapshot table that does not end on a cluster
    must('qemu-img', ['snapshot', '-c', 's', snap]);
    const packed = join(dir, 'packed.qcow2'); // compressed clusters share host clusters
    must('qemu-img', ['convert', '-c', '-O', 'qcow2', snap, packed]);
    for (const p of [tail, snap, packed]) {
      const mine = platter(['check', p]);
      assert.equal(mine.status, 0, mine.stderr);
      assert.equal(end(mine.stdout), end(must('qemu-img', ['check', p])), p);
    }
  });

  it('a leaked cluster: exit 3 like qemu-img, -r leaks repairs it', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path, l2 } = image();
    patch(path, l2 + 8, [0, 0, 0, 0, 0, 0, 0, 0]); // drop the second cluster's mapping
    assert.equal(run('qemu-img', ['check', path]).status, 3);
    const r = platter(['check', '--json', path]);
    assert.equal(r.status, 3, r.stderr);
    assert.equal(JSON.parse(r.stdout).leaks, 1);
    const fix = platter(['check', '-r', 'leaks', path]);
    assert.equal(fix.status, 0, fix.stdout + fix.stderr);
    assert.match(fix.stdout, /1 leaked clusters/);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
  });

  it('a refcount too low is a corruption: exit 2, -r leaks leaves it, -r all rebuilds', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path, data } = image();
    patch(path, refcountEntry(path, data), [0, 0]);
    assert.equal(run('qemu-img', ['check', path]).status, 2);
    assert.equal(platter(['check', path]).status, 2);
    assert.equal(platter(['check', '-r', 'leaks', path]).status, 2);
    const fix = platter(['check', '-r', 'all', path]);
    assert.equal(fix.status, 0, fix.stdout + fix.stderr);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    const raw = join(dir, 'after.raw');
    must('qemu-img', ['convert', '-O', 'raw', path, raw]);
    assert.ok(
      readFileSync(raw)
        .subarray(0, 131072)
        .every((b) => b === 0x41),
      'data kept',
    );
  });

  it('a refcount block past the end of the file: corruption, rebuilt by -r all', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path } = image();
    const b = readFileSync(path);
    const rt = Number(b.readBigUInt64BE(48));
    b.writeBigUInt64BE(0x7fff0000n, rt);
    writeFileSync(path, b);
    const r = platter(['check', path]);
    assert.equal(r.status, 2, r.stdout + r.stderr);
    assert.match(r.stdout, /refcount block 0 .*past end of file/);
    assert.equal(platter(['check', '-r', 'all', path]).status, 0);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
  });

  it('the corrupt bit refuses writes until check -r all clears it', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path } = image();
    patch(path, 79, [2]);
    const w = platter(['snapshot', '-c', 's', path]);
    assert.equal(w.status, 1);
    assert.match(w.stderr, /marked corrupt/);
    assert.equal(platter(['check', '-r', 'all', path]).status, 0);
    assert.equal(readFileSync(path)[79] & 2, 0);
  });

  it('metadata too broken to open (a refcount table past the end): one error line, exit 2 as qemu-img', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path } = image();
    patch(path, 48, [0, 0, 0, 0, 0x10, 0, 0, 0]); // refcount_table_offset
    const r = platter(['check', path]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^platter: error: .*corrupt image: refcount table .* past end of file.*\n$/);
    assert.equal(run('qemu-img', ['check', path]).status, 2);
  });

  it('-r on a format platter checks but cannot repair (VDI, VHD): one error line, the image untouched', (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    for (const [fmt, qemu] of [
      ['vdi', 'vdi'],
      ['vhd', 'vpc'],
    ]) {
      const path = join(dir, `norepair.${fmt}`);
      must('qemu-img', ['create', '-q', '-f', qemu, path, '4M']);
      const before = readFileSync(path);
      const r = platter(['check', '-r', 'all', path]);
      assert.equal(r.status, 1);
      assert.match(r.stderr, new RegExp(`^platter: error: .*platter cannot repair ${fmt} images.*\\n$`));
      assert.ok(readFileSync(path).equals(before));
      assert.equal(platter(['check', path]).status, 0, 'check without -r still reports');
    }
  });

  it('a raw image cannot be checked: exit 1 with one error line', () => {
    const path = join(dir, 'plain.raw');
    writeFileSync(path, new Uint8Array(65536));
    const r = platter(['check', '-f', 'raw', path]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^platter: error: .*raw images have no metadata/);
  });

  it('a missing image: exit 1', () => {
    const r = platter(['check', join(dir, 'nope.qcow2')]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^platter: error:/);
  });
});
