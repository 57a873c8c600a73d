/**
 * platter resize: a grown range reads as zeros, never as what the backing file
 * holds there (as qemu-img resize) nor as bytes a shrink left in a kept granule.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('platter-resize-grown-');
const M = 1 << 20;
const QEMU_NAME: Record<string, string> = { vhd: 'vpc' };
const qemuFmt = (f: string) => QEMU_NAME[f] ?? f;

/**
 * The image's content as raw bytes: read by qemu-img where it reads the
 * format's backing files (qcow2, VMDK), else by platter (qemu reads no VHD,
 * VHDX or VDI differencing image).
 */
function contentOf(path: string, fmt: string): Buffer {
  const out = `${path}.raw`;
  if (fmt === 'qcow2' || fmt === 'vmdk') must('qemu-img', ['convert', '-f', fmt, '-O', 'raw', path, out]);
  else assert.equal(platter(['convert', '-q', '-O', 'raw', path, out]).status, 0);
  return readFileSync(out);
}

describe('platter resize: what a grown range reads', () => {
  for (const [fmt, oldSize] of [
    ['qcow2', 5 * M],
    ['qcow2', 5 * M + 1024],
    ['vhd', 5 * M],
    ['vhdx', 5 * M],
    ['vdi', 5 * M],
  ] as const) {
    it(`${fmt} overlay of ${oldSize} bytes over a 10 MiB backing file grown to 12 MiB: zeros past the old end`, (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const base = join(dir, `base-${fmt}-${oldSize}.${fmt}`);
      const top = join(dir, `top-${fmt}-${oldSize}.${fmt}`);
      assert.equal(platter(['create', '-q', '-f', fmt, base, '10M']).status, 0);
      must('qemu-io', ['-f', qemuFmt(fmt), '-c', `write -P 0x11 0 ${10 * M}`, base]);
      const c = platter(['create', '-q', '-f', fmt, '-b', base, '-F', fmt, top, String(oldSize)]);
      assert.equal(c.status, 0, c.stderr);
      const r = platter(['resize', top, '12M']);
      assert.equal(r.status, 0, r.stderr);
      const got = contentOf(top, fmt);
      assert.equal(got.length, 12 * M);
      assert.ok(
        got.subarray(0, oldSize).every((b) => b === 0x11),
        'the old range still reads the backing file',
      );
      assert.equal(
        got.subarray(oldSize).findIndex((b) => b !== 0),
        -1,
        'the grown range reads zeros',
      );
      if (fmt === 'qcow2') assert.equal(run('qemu-img', ['check', top]).status, 0);
    });
  }

  it('qcow2: the same as qemu-img resize of the same overlay', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'same-base.raw');
    must('qemu-img', ['create', '-q', '-f', 'raw', base, '10M']);
    must('qemu-io', ['-f', 'raw', '-c', `write -P 0x22 0 ${10 * M}`, base]);
    const mine = join(dir, 'same-mine.qcow2');
    const theirs = join(dir, 'same-theirs.qcow2');
    for (const f of [mine, theirs])
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', f, '3M']);
    assert.equal(platter(['resize', mine, '+5M']).status, 0);
    must('qemu-img', ['resize', '-q', theirs, '+5M']);
    assert.equal(run('qemu-img', ['compare', mine, theirs]).status, 0, 'identical to qemu-img');
  });

  it('vmdk: shrink then grow: the bytes a shrink left in the last grain read as zeros', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const img = join(dir, 'shrunk.vmdk');
    assert.equal(platter(['create', '-q', '-f', 'vmdk', img, '8M']).status, 0);
    must('qemu-io', ['-f', 'vmdk', '-c', `write -P 0x33 0 ${8 * M}`, img]);
    const cut = 5000 * 1024; // inside a 64 KiB grain
    assert.equal(platter(['resize', '--shrink', img, String(cut)]).status, 0);
    assert.equal(platter(['resize', img, '8M']).status, 0);
    const got = contentOf(img, 'vmdk');
    assert.ok(got.subarray(0, cut).every((b) => b === 0x33));
    assert.equal(
      got.subarray(cut).findIndex((b) => b !== 0),
      -1,
      'the grown range reads zeros',
    );
    assert.equal(run('qemu-img', ['check', img]).status, 0);
  });
});
