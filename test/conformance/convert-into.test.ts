/**
 * platter convert from host files into image formats: the copy engine scans
 * the source on the host (Storage.readSpans) and writes what is not zero
 * through the format, which may place it itself (hostSpans 'allocate',
 * Storage.writeSpans). What it makes must pass the peer's checker, read back
 * identical through the peer, and keep zeros unallocated like qemu-img does.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { hasPeer, must, needPeers, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('platter-convert-into-');
const MiB = 1 << 20;
const SIZE = 37 * MiB + 3 * 512;

/**
 * A sparse raw source: holes, 5 MiB of random data, 3 MiB of written zeros
 * inside data (a data extent that is all zeros), a partly zero 64 KiB, an
 * unaligned run, and the last byte.
 */
function source(): string {
  const path = join(dir, 'source.raw');
  const fd = openSync(path, 'w');
  const put = (buf: Uint8Array, at: number) => writeSync(fd, buf, 0, buf.length, at);
  put(randomBytes(5 * MiB), MiB);
  put(new Uint8Array(3 * MiB), 8 * MiB);
  const mixed = randomBytes(64 * 1024);
  mixed.fill(0, 4096, 40960);
  put(mixed, 12 * MiB);
  put(randomBytes(70000), 20 * MiB + 1000);
  put(randomBytes(2 * MiB + 12345), 30 * MiB);
  put(randomBytes(1), SIZE - 1);
  closeSync(fd);
  return path;
}

const allocated = (p: string): number => statSync(p).blocks * 512;

const CASES: Array<{ name: string; format: string; qemu: string; opts: string[]; check: boolean }> = [
  { name: 'qcow2', format: 'qcow2', qemu: 'qcow2', opts: [], check: true },
  {
    name: 'qcow2 512-byte clusters',
    format: 'qcow2',
    qemu: 'qcow2',
    opts: ['-o', 'cluster_size=512'],
    check: true,
  },
  {
    name: 'qcow2 2 MiB clusters, v2',
    format: 'qcow2',
    qemu: 'qcow2',
    opts: ['-o', 'cluster_size=2M,compat=0.10'],
    check: true,
  },
  {
    name: 'qcow2 4 KiB clusters, 1-bit refcounts',
    format: 'qcow2',
    qemu: 'qcow2',
    opts: ['-o', 'cluster_size=4096,refcount_bits=1'],
    check: true,
  },
  { name: 'vdi', format: 'vdi', qemu: 'vdi', opts: [], check: true },
  { name: 'vhd', format: 'vhd', qemu: 'vpc', opts: [], check: false },
  { name: 'vhdx', format: 'vhdx', qemu: 'vhdx', opts: [], check: true },
  { name: 'vmdk', format: 'vmdk', qemu: 'vmdk', opts: [], check: true },
];

describe('convert from a host file into each format', () => {
  for (const c of CASES) {
    it(`${c.name}: the peer checks it, reads the source's bytes, and zeros stay unallocated`, (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const src = source();
      const mine = join(dir, `mine-${c.name.replace(/\W+/g, '-')}.${c.format}`);
      const theirs = `${mine}.qemu`;
      const r = platter(['convert', '-O', c.format, ...c.opts, src, mine]);
      assert.equal(r.status, 0, r.stderr);
      if (c.check) {
        const chk = run('qemu-img', ['check', '-f', c.qemu, mine]);
        assert.equal(chk.status, 0, `qemu-img check: ${chk.stdout}${chk.stderr}`);
      } else if (c.format === 'vhd' && hasPeer('vhdiinfo')) {
        // qemu-img does not check VHDs: libvhdi must open it, at its size.
        assert.match(must('vhdiinfo', [mine]), new RegExp(`Media size\\s*:.*\\(${SIZE} bytes\\)`));
      }
      must('qemu-img', ['compare', '-q', '-f', 'raw', '-F', c.qemu, src, mine]);
      // qemu-img's own convert of the same source: platter allocates no more than it (+1 MiB of metadata).
      const qemuOpts = c.format === 'vhd' ? ['-o', 'subformat=dynamic'] : c.opts;
      must('qemu-img', ['convert', '-O', c.qemu, ...qemuOpts, src, theirs]);
      assert.ok(
        allocated(mine) <= allocated(theirs) + MiB,
        `${c.name}: platter allocates ${allocated(mine)} bytes, qemu-img ${allocated(theirs)}`,
      );
    });
  }

  it('a source whose size is not a whole number of sectors: each format rounds up like qemu-img, raw keeps it', (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const odd = 3 * MiB + 1001;
    const src = join(dir, 'odd.raw');
    const fd = openSync(src, 'w');
    writeSync(fd, randomBytes(odd - MiB), 0, odd - MiB, MiB); // data up to the very last byte
    closeSync(fd);
    for (const c of CASES.filter((x) => x.opts.length === 0)) {
      const mine = join(dir, `odd-mine.${c.format}`);
      const theirs = join(dir, `odd-theirs.${c.format}`);
      const r = platter(['convert', '-O', c.format, src, mine]);
      assert.equal(r.status, 0, `${c.name}: ${r.stderr}`);
      const size = (f: string) =>
        JSON.parse(must('qemu-img', ['info', '--output=json', '-f', c.qemu, f]))['virtual-size'];
      assert.equal(size(mine), odd - (odd % 512) + 512, `${c.name}: virtual size`);
      // qemu-img rounds the same way; a VHD it makes is rounded further to a
      // CHS geometry (platter's VHDs keep the size: force_size=on by default).
      const qemuOpts = c.format === 'vhd' ? ['-o', 'subformat=dynamic,force_size=on'] : [];
      must('qemu-img', ['convert', '-O', c.qemu, ...qemuOpts, src, theirs]);
      assert.equal(size(mine), size(theirs), `${c.name}: virtual size as qemu-img's`);
      if (c.check) must('qemu-img', ['check', '-q', '-f', c.qemu, mine]);
      // qemu-img reads the raw source padded with zeros to the sector: the same bytes.
      must('qemu-img', ['compare', '-q', '-f', 'raw', '-F', c.qemu, src, mine]);
    }
    const raw = join(dir, 'odd-mine.raw');
    const r = platter(['convert', '-O', 'raw', src, raw]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(raw).size, odd, 'raw: exactly the source bytes, no padding');
  });

  it('qcow2 from a qcow2 chain (spans in every layer) into qcow2: clean and identical', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'chain-base.qcow2');
    const top = join(dir, 'chain-top.qcow2');
    must('qemu-img', ['convert', '-O', 'qcow2', source(), base]);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    must('qemu-io', [
      '-c',
      `write -P 0x61 ${2 * MiB + 512} ${3 * MiB}`,
      '-c',
      `write -z ${30 * MiB} 65536`,
      top,
    ]);
    const out = join(dir, 'from-chain.qcow2');
    const r = platter(['convert', '-O', 'qcow2', top, out]);
    assert.equal(r.status, 0, r.stderr);
    must('qemu-img', ['check', out]);
    must('qemu-img', ['compare', '-q', top, out]);
  });
});
