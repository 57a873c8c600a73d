/** platter resize: grow (L1 grows too), shrink only an unallocated tail. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('platter-resize-');
const vsize = (p: string): number =>
  JSON.parse(must('qemu-img', ['info', '--output=json', p]))['virtual-size'];

describe('platter resize', () => {
  it('grows past the L1 table (512-byte clusters), data kept, qemu-img checks clean', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const p = join(dir, 'g.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', p, '1M']);
    must('qemu-io', ['-c', 'write -P 0x44 1000 5000', p]);
    const want = join(dir, 'g.raw');
    must('qemu-img', ['convert', '-O', 'raw', p, want]);
    const r = platter(['resize', p, '+3G']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Image resized/);
    assert.equal(vsize(p), 3 * 2 ** 30 + 2 ** 20);
    assert.equal(run('qemu-img', ['check', p]).status, 0);
    must('qemu-io', ['-c', 'write -P 0x55 3G 512', p]);
    assert.equal(run('qemu-img', ['check', p]).status, 0);
    const head = join(dir, 'head.raw');
    must('qemu-img', ['dd', `if=${p}`, `of=${head}`, 'bs=1M', 'count=1', '-O', 'raw']);
    assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', head, want]).status, 0);
  });

  it('grows an image with snapshots; the snapshot keeps its size', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const p = join(dir, 'snap.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', p, '1M']);
    must('qemu-io', ['-c', 'write -P 0x44 0 64k', p]);
    must('qemu-img', ['snapshot', '-c', 'small', p]);
    assert.equal(platter(['resize', p, '2M']).status, 0);
    assert.equal(vsize(p), 2 * 2 ** 20);
    assert.equal(run('qemu-img', ['check', p]).status, 0);
    assert.equal(platter(['snapshot', '-a', 'small', p]).status, 0);
    assert.equal(vsize(p), 2 ** 20);
    assert.equal(run('qemu-img', ['check', p]).status, 0);
    const shrink = platter(['resize', '--shrink', p, '512K']);
    assert.equal(shrink.status, 1);
    assert.match(shrink.stderr, /internal snapshots/);
  });

  it('shrinks only with --shrink and only an unallocated tail', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const p = join(dir, 's.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', p, '8M']);
    must('qemu-io', ['-c', 'write -P 0x44 0 1M', '-c', 'write -P 0x45 6M 4096', p]);
    const no = platter(['resize', p, '-4M']);
    assert.equal(no.status, 1);
    assert.match(no.stderr, /--shrink/);
    const busy = platter(['resize', '--shrink', p, '-4M']);
    assert.equal(busy.status, 1);
    assert.match(busy.stderr, /holds data/);
    assert.equal(vsize(p), 8 * 2 ** 20);
    const ok = platter(['resize', '--shrink', p, '5M']);
    assert.equal(ok.status, 1, 'the tail from 5M holds data at 6M');
    must('qemu-io', ['-c', 'discard 6M 64k', p]);
    const ok2 = platter(['resize', '--shrink', p, '5M']);
    assert.equal(ok2.status, 0, ok2.stderr);
    assert.equal(vsize(p), 5 * 2 ** 20);
    assert.equal(run('qemu-img', ['check', p]).status, 0);
  });
});
