/** platter rebase: safe mode keeps the virtual content, -u only renames. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('platter-rebase-');

function setup(tag: string): { top: string; want: string } {
  const b1 = join(dir, `${tag}-old.qcow2`);
  const b2 = join(dir, `${tag}-new.qcow2`);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', b1, '4M']);
  must('qemu-io', ['-c', 'write -P 0x01 0 4M', b1]);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', b2, '4M']);
  must('qemu-io', ['-c', 'write -P 0x01 0 2M', '-c', 'write -P 0x02 2M 1M', b2]);
  const top = join(dir, `${tag}-top.qcow2`);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', `${tag}-old.qcow2`, '-F', 'qcow2', top]);
  must('qemu-io', ['-c', 'write -P 0x09 2M 4096', '-c', 'write -P 0x09 100 100', top]);
  const want = join(dir, `${tag}-want.raw`);
  must('qemu-img', ['convert', '-O', 'raw', top, want]);
  return { top, want };
}

describe('platter rebase', () => {
  it('safe: copies what differs, then records the new backing', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { top, want } = setup('safe');
    const r = platter(['rebase', '-b', 'safe-new.qcow2', '-F', 'qcow2', top]);
    assert.equal(r.status, 0, r.stderr);
    const info = JSON.parse(must('qemu-img', ['info', '--output=json', top]));
    assert.equal(info['backing-filename'], 'safe-new.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2');
    assert.equal(run('qemu-img', ['compare', top, want]).status, 0, 'content unchanged');
    assert.equal(run('qemu-img', ['check', top]).status, 0);
  });

  it('safe onto nothing ("") makes a standalone image', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { top, want } = setup('alone');
    assert.equal(platter(['rebase', '-b', '', top]).status, 0);
    const info = JSON.parse(must('qemu-img', ['info', '--output=json', top]));
    assert.equal(info['backing-filename'], undefined);
    assert.equal(run('qemu-img', ['compare', top, want]).status, 0);
  });

  it('-u: only the name changes (content now comes from the new backing)', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { top, want } = setup('unsafe');
    assert.equal(platter(['rebase', '-u', '-b', 'unsafe-new.qcow2', top]).status, 0);
    const info = JSON.parse(must('qemu-img', ['info', '--output=json', top]));
    assert.equal(info['backing-filename'], 'unsafe-new.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2', 'the format is probed');
    assert.equal(
      run('qemu-img', ['compare', top, want]).status,
      1,
      'content differs where the backings differ',
    );
  });
});
