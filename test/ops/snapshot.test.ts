/** platter snapshot -l/-c/-a/-d, interoperable with qemu-img snapshot both ways. */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('platter-snapshot-');

const raw = (path: string, name: string): Buffer => {
  const out = join(dir, name);
  must('qemu-img', ['convert', '-O', 'raw', path, out]);
  return readFileSync(out);
};

describe('platter snapshot', () => {
  it('platter creates, applies and deletes; qemu-img sees it and checks clean', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'a.qcow2');
    assert.equal(platter(['create', '-f', 'qcow2', path, '4M']).status, 0);
    must('qemu-io', ['-c', 'write -P 0x01 0 1M', '-c', 'write -P 0x02 3M 4096', path]);
    const before = raw(path, 'before.raw');
    const c = platter(['snapshot', '-c', 'one', path]);
    assert.equal(c.status, 0, c.stderr);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    must('qemu-io', ['-c', 'write -P 0x03 100 200', '-c', 'write -z 3M 64k', path]);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    const changed = raw(path, 'changed.raw');
    assert.ok(!changed.equals(before));
    const list = JSON.parse(platter(['snapshot', '-l', '--json', path]).stdout);
    assert.deepEqual(
      list.map((s: { id: string; name: string }) => [s.id, s.name]),
      [['1', 'one']],
    );
    assert.match(must('qemu-img', ['snapshot', '-l', path]), /\bone\b/);
    // The extra data qemu-img writes: the disk size and icount (0) too.
    const [snap] = JSON.parse(must('qemu-img', ['info', '--output=json', path])).snapshots;
    assert.equal(snap.icount, 0);
    assert.equal(platter(['snapshot', '-a', 'one', path]).status, 0);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    assert.ok(raw(path, 'applied.raw').equals(before), 'apply reverts the content');
    assert.equal(platter(['snapshot', '-d', 'one', path]).status, 0);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    assert.doesNotMatch(must('qemu-img', ['snapshot', '-l', path]), /\bone\b/);
    assert.ok(raw(path, 'deleted.raw').equals(before));
  });

  it('qemu-img creates; platter lists, applies and deletes; qemu-img agrees', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'b.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', path, '2M']);
    must('qemu-io', ['-c', 'write -P 0x11 0 256k', path]);
    const first = raw(path, 'b1.raw');
    must('qemu-img', ['snapshot', '-c', 'base', path]);
    must('qemu-io', ['-c', 'write -P 0x22 4096 8192', path]);
    must('qemu-img', ['snapshot', '-c', 'second', path]);
    must('qemu-io', ['-c', 'write -P 0x33 0 1M', path]);
    const l = platter(['snapshot', '-l', path]);
    assert.equal(l.status, 0, l.stderr);
    assert.match(l.stdout, /base/);
    assert.match(l.stdout, /second/);
    assert.equal(platter(['snapshot', '-a', 'base', path]).status, 0);
    assert.ok(raw(path, 'b2.raw').equals(first));
    assert.equal(platter(['snapshot', '-d', 'second', path]).status, 0);
    const chk = run('qemu-img', ['check', path]);
    assert.equal(chk.status, 0, chk.stdout);
    must('qemu-img', ['snapshot', '-d', 'base', path]);
    assert.equal(platter(['check', path]).status, 0);
  });

  it('-a takes an ID before a name, -d a name before an ID, as qemu-img does (a snapshot named "1" that is ID 2)', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'ids.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1M']);
    must('qemu-io', ['-c', 'write -P 1 0 64k', path]);
    must('qemu-img', ['snapshot', '-c', '2', path]); // ID 1, name "2"
    must('qemu-io', ['-c', 'write -P 2 0 64k', path]);
    must('qemu-img', ['snapshot', '-c', '1', path]); // ID 2, name "1"
    must('qemu-io', ['-c', 'write -P 3 0 64k', path]);
    const theirs = join(dir, 'ids-theirs.qcow2');
    copyFileSync(path, theirs);
    assert.equal(platter(['snapshot', '-a', '1', path]).status, 0);
    must('qemu-img', ['snapshot', '-a', '1', theirs]);
    assert.equal(run('qemu-img', ['compare', path, theirs]).status, 0, 'the same snapshot applied');
    must('qemu-io', ['-c', 'read -P 1 0 64k', path]); // ID 1's content
    assert.equal(platter(['snapshot', '-d', '1', path]).status, 0);
    must('qemu-img', ['snapshot', '-d', '1', theirs]);
    const names = (f: string) =>
      JSON.parse(must('qemu-img', ['info', '--output=json', f])).snapshots.map(
        (x: { name: string }) => x.name,
      );
    assert.deepEqual(names(path), names(theirs));
    assert.deepEqual(names(path), ['2'], 'the snapshot named 1 is gone');
  });

  it('refusals: duplicate name, unknown name, raw images', (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const path = join(dir, 'c.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1M']);
    assert.equal(platter(['snapshot', '-c', 'x', path]).status, 0);
    const dup = platter(['snapshot', '-c', 'x', path]);
    assert.equal(dup.status, 1);
    assert.match(dup.stderr, /already exists/);
    const none = platter(['snapshot', '-a', 'nope', path]);
    assert.equal(none.status, 1);
    assert.match(none.stderr, /no snapshot with the ID or name 'nope'/);
    const r = join(dir, 'd.raw');
    writeFileSync(r, new Uint8Array(4096));
    const rawSnap = platter(['snapshot', '-f', 'raw', '-l', r]);
    assert.equal(rawSnap.status, 1);
    assert.match(rawSnap.stderr, /raw images have no internal snapshots/);
  });
});
