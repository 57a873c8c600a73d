/** platter commit: the overlay's data lands in its backing file, the overlay is emptied. */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('platter-commit-');

describe('platter commit', () => {
  for (const baseFmt of ['qcow2', 'raw']) {
    it(`commits into a ${baseFmt} backing; qemu-img checks both`, (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const base = join(dir, `base.${baseFmt}`);
      must('qemu-img', ['create', '-q', '-f', baseFmt, base, '4M']);
      must('qemu-io', ['-f', baseFmt, '-c', 'write -P 0x10 0 4M', base]);
      const top = join(dir, `top-${baseFmt}.qcow2`);
      const c = platter(['create', '-f', 'qcow2', '-b', `base.${baseFmt}`, '-F', baseFmt, top]);
      assert.equal(c.status, 0, c.stderr);
      must('qemu-io', [
        '-c',
        'write -P 0x20 1000 3000',
        '-c',
        'write -z 1M 128k',
        '-c',
        'write -P 0x30 4190000 4304',
        top,
      ]);
      const want = join(dir, `want-${baseFmt}.raw`);
      must('qemu-img', ['convert', '-O', 'raw', top, want]);
      const r = platter(['commit', top]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /Image committed/);
      assert.equal(
        run('qemu-img', ['compare', '-f', baseFmt, '-F', 'raw', base, want]).status,
        0,
        'the backing holds the data',
      );
      assert.equal(run('qemu-img', ['compare', top, want]).status, 0, 'the chain reads as before');
      const map = JSON.parse(must('qemu-img', ['map', '--output=json', top]));
      assert.ok(
        map.every((m: { depth: number }) => m.depth === 1),
        'the overlay is empty',
      );
      assert.equal(run('qemu-img', ['check', top]).status, 0);
      if (baseFmt === 'qcow2') assert.equal(run('qemu-img', ['check', base]).status, 0);
    });
  }

  it('commits a VMDK delta link into its parent; the emptied link follows the parent’s new CID', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'base.vmdk');
    const top = join(dir, 'top.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    must('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x10 0 4M', base]);
    const c = platter(['create', '-f', 'vmdk', '-b', 'base.vmdk', top]);
    assert.equal(c.status, 0, c.stderr);
    must('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x3c 5000 10000', top]);
    const want = join(dir, 'want-vmdk.raw');
    must('qemu-img', ['convert', '-O', 'raw', top, want]);
    const cid = (f: string) => /^CID=([0-9a-f]+)/m.exec(readFileSync(f, 'latin1'))?.[1];
    const before = cid(base);
    const r = platter(['commit', top]);
    assert.equal(r.status, 0, r.stderr);
    assert.notEqual(cid(base), before, 'the parent has a new CID');
    assert.match(readFileSync(top, 'latin1'), new RegExp(`^parentCID=${cid(base)}$`, 'm'));
    // Both read the chain as before (qemu-img refuses a link whose parentCID is stale).
    assert.equal(run('qemu-img', ['compare', '-F', 'raw', top, want]).status, 0, 'the chain reads as before');
    assert.equal(
      run('qemu-img', ['compare', '-F', 'raw', base, want]).status,
      0,
      'the parent holds the data',
    );
    assert.equal(platter(['compare', top, want]).status, 0);
    assert.equal(run('qemu-img', ['check', top]).status, 0);
  });

  it('a backing file smaller than the overlay grows to its size, as qemu-img commit grows it', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const setup = (name: string) => {
      const base = join(dir, `${name}.raw`);
      const top = join(dir, `${name}.qcow2`);
      must('qemu-img', ['create', '-q', '-f', 'raw', base, '4M']);
      must('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4M', base]);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', top, '8M']);
      must('qemu-io', ['-c', 'write -P 2 6M 64k', '-c', 'write -P 3 1M 4k', top]);
      return { base, top };
    };
    const mine = setup('grow-mine');
    const theirs = setup('grow-theirs');
    const want = join(dir, 'grow-want.raw');
    must('qemu-img', ['convert', '-O', 'raw', mine.top, want]);
    const r = platter(['commit', mine.top]);
    assert.equal(r.status, 0, r.stderr);
    must('qemu-img', ['commit', '-q', theirs.top]);
    assert.ok(
      readFileSync(mine.base).equals(readFileSync(theirs.base)),
      'the same backing file as qemu-img makes',
    );
    assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', mine.base, want]).status, 0);
    assert.equal(run('qemu-img', ['compare', mine.top, want]).status, 0, 'the chain reads as before');
  });

  it('refuses an image without a backing file, and raw overlays', (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const alone = join(dir, 'alone.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', alone, '1M']);
    const r = platter(['commit', alone]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /no backing file/);
    const rawImg = join(dir, 'x.raw');
    writeFileSync(rawImg, new Uint8Array(4096));
    const before = readFileSync(rawImg);
    assert.equal(platter(['commit', '-f', 'raw', rawImg]).status, 1);
    assert.ok(readFileSync(rawImg).equals(before));
  });
});
