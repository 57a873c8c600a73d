/** EWF images through every platter command: convert both ways, hash, info; acquire straight to VMDK. */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, platter, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { ewfacquire, makeSource, md5 } from './helpers.js';

const dir = tempDir('platter-ewf-cmd-');
const src = makeSource(dir);

describe('ewf with the other commands', () => {
  it('convert E01 -> qcow2 and vmdk: qemu-img compare says identical; hash equals md5sum', (t) => {
    if (!needPeers(t, 'ewfacquire', 'qemu-img')) return;
    const e01 = join(dir, 'peer');
    ewfacquire(src.path, e01, ['-f', 'encase6', '-c', 'fast', '-S', '1M']);
    for (const fmt of ['qcow2', 'vmdk']) {
      const out = join(dir, `from-e01.${fmt}`);
      const r = platter(['convert', '-O', fmt, `${e01}.E01`, out]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(must('qemu-img', ['compare', out, src.path]), /Images are identical/);
    }
    const h = platter(['hash', '-a', 'md5', `${e01}.E01`]);
    assert.equal(h.status, 0, h.stderr);
    assert.match(h.stdout, new RegExp(md5(src.data)));
  });

  it('convert raw -> ewf (multi-segment, via the .partial name) and -c: ewfverify clean', (t) => {
    if (!needPeers(t, 'ewfverify', 'ewfinfo')) return;
    const out = join(dir, 'conv.E01');
    let r = platter(['convert', '-O', 'ewf', '-o', 'segment_size=1M,case_number=K-9', src.path, out]);
    assert.equal(r.status, 0, r.stderr);
    const segs = readdirSync(dir).filter((f) => /^conv\.E\d\d$/.test(f));
    assert.ok(segs.length >= 4, `segments ${segs}`);
    assert.ok(!readdirSync(dir).some((f) => f.includes('partial')), 'no .partial file is left');
    assert.equal(run('ewfverify', ['-q', out]).status, 0);
    assert.match(must('ewfinfo', [out]), /Case number:\s+K-9/);
    const c = join(dir, 'convc.E01');
    r = platter(['convert', '-c', '-O', 'ewf', src.path, c]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(must('ewfinfo', [c]), /Compression level:\s+good \(fast\)/);
    assert.equal(run('ewfverify', ['-q', c]).status, 0);
  });

  it('acquire -O vmdk: the evidence as a VM disk, verified', (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const out = join(dir, 'evidence.vmdk');
    const r = platter(['acquire', '-q', '-O', 'vmdk', src.path, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(must('qemu-img', ['compare', out, src.path]), /Images are identical/);
    assert.match(must('cat', [`${out}.log`]), /Verification: match/);
  });
});
