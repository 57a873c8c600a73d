/** The user's view: platter convert/create/info with VMDK options (bin/platter, built). */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, platter, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { qemuWrite } from './util.js';

const dir = tempDir('platter-vmdk-cli-');

describe('vmdk on the command line', () => {
  it('convert -c needs streamOptimized: an error line and no files left; with it, qemu-img reads it back', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const src = join(dir, 'src.raw');
    must('qemu-img', ['create', '-q', '-f', 'raw', src, '5M']);
    qemuWrite(src, [[4096, 300000, 0x3a]], 'raw');
    const bad = platter(['convert', '-c', '-O', 'vmdk', src, join(dir, 'bad.vmdk')]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^platter: error: .*streamOptimized/m);
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.startsWith('bad')),
      [],
    );
    const out = join(dir, 'so.vmdk');
    const ok = platter(['convert', '-c', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, out]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', src, out]).status, 0);
    const info = JSON.parse(platter(['info', '--json', out]).stdout);
    assert.equal(info.format, 'vmdk');
    assert.equal(info.subformat, 'streamOptimized');
    assert.equal(info.details.compressed, true);
    // The embedded descriptor names the final file, not convert's temporary one.
    assert.deepEqual(
      info.details.extents.map((e: { file: string }) => e.file),
      ['so.vmdk'],
    );
  });

  it('convert to twoGbMaxExtentFlat names the extents after the destination', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const src = join(dir, 'src2.raw');
    must('qemu-img', ['create', '-q', '-f', 'raw', src, '3M']);
    const out = join(dir, 'split.vmdk');
    const r = platter(['convert', '-O', 'vmdk', '-o', 'subformat=twoGbMaxExtentFlat', src, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(dir, 'split-f001.vmdk')));
    assert.equal(run('qemu-img', ['compare', src, out]).status, 0);
  });
});
