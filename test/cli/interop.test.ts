/**
 * platter against qemu-img on the same files: convert, compare and map must
 * agree (random layouts from a seeded generator, written by qemu-io).
 */
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { platterIn } from './cli.js';

const dir = tempDir();
const p = (args: string[]) => platterIn(dir, args);
const f = (name: string) => join(dir, name);
const K = 1024;
const M = K * K;

function rng(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    return s;
  };
}

/** qemu-io commands for a random layout: data with patterns, explicit zeros, all in 4K units. */
function randomWrites(seed: number, size: number, count: number): string[] {
  const r = rng(seed);
  const cmds: string[] = [];
  for (let i = 0; i < count; i++) {
    const len = (1 + (r() % 64)) * 4 * K;
    const off = (r() % Math.floor((size - len) / (4 * K))) * 4 * K;
    const kind = r() % 4;
    if (kind === 0) cmds.push(`write -z ${off} ${len}`);
    else if (kind === 1) cmds.push(`write -P 0 ${off} ${len}`);
    else cmds.push(`write -P ${1 + (r() % 250)} ${off} ${len}`);
  }
  return cmds;
}

function qemuIoWrite(file: string, fmt: string, cmds: string[]): void {
  must('qemu-io', ['-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file]);
}

type MapRow = {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
};
/** qemu-img's map, host offsets included (platter gives them too). */
const qemuMap = (file: string): MapRow[] =>
  JSON.parse(must('qemu-img', ['map', '--output=json', file])).map(
    ({ compressed: _c, ...rest }: MapRow & { compressed?: boolean }) => rest,
  );

describe('interop with qemu-img', () => {
  for (const seed of [1, 2]) {
    it(`raw, random layout ${seed}: convert, compare and map agree`, (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const src = f(`src${seed}.raw`);
      must('qemu-img', ['create', '-f', 'raw', src, '24M']);
      qemuIoWrite(src, 'raw', randomWrites(seed, 24 * M, 20));
      // map: same ranges, flags and depth as qemu-img on the same sparse file.
      assert.deepEqual(JSON.parse(p(['map', '--json', src]).stdout), qemuMap(src));
      // convert by both; each compares identical with the other, both ways.
      const a = f(`p${seed}.raw`);
      const b = f(`q${seed}.raw`);
      assert.equal(p(['convert', '-O', 'raw', src, a]).status, 0);
      must('qemu-img', ['convert', '-O', 'raw', src, b]);
      assert.ok(readFileSync(a).equals(readFileSync(b)), 'byte-identical results');
      assert.equal(run('qemu-img', ['compare', a, src]).stdout, 'Images are identical.\n');
      assert.equal(p(['compare', b, src]).stdout, 'Images are identical.\n');
      // Sparse: platter's result allocates no more than qemu-img's (+ a few blocks).
      assert.ok(
        statSync(a).blocks <= statSync(b).blocks + 64,
        `${statSync(a).blocks} vs ${statSync(b).blocks} blocks`,
      );
      // A change: both report the same first mismatch and exit 1.
      must('qemu-io', ['-f', 'raw', '-c', `write -P 0x77 ${5 * M + 1234 + seed * 4096} 10`, b]);
      const ours = p(['compare', a, b]);
      const theirs = run('qemu-img', ['compare', a, b]);
      assert.equal(ours.stdout, theirs.stdout);
      assert.equal(ours.status, theirs.status);
      assert.equal(ours.status, 1);
    });
  }

  it('qcow2 chain: map (depth, zero clusters, holes) and hash agree with qemu-img', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    must('qemu-img', ['create', '-f', 'qcow2', f('base.qcow2'), '16M']);
    qemuIoWrite(f('base.qcow2'), 'qcow2', ['write -P 1 0 64k', 'write -P 2 1M 128k', 'write -z 4M 64k']);
    must('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', f('top.qcow2')]);
    qemuIoWrite(f('top.qcow2'), 'qcow2', ['write -P 3 32k 64k', 'write -z 1M 64k', 'write -P 0 8M 64k']);
    assert.deepEqual(JSON.parse(p(['map', '--json', f('top.qcow2')]).stdout), qemuMap(f('top.qcow2')));
    must('qemu-img', ['convert', '-O', 'raw', f('top.qcow2'), f('flat.raw')]);
    const ours = p(['hash', '-a', 'md5', f('top.qcow2')]).stdout.split(' = ')[1];
    const theirs = must('md5sum', [f('flat.raw')]).split(' ')[0];
    assert.equal(ours.trim(), theirs);
    // convert the chain to raw and to qcow2: qemu-img check is clean and contents compare identical.
    assert.equal(p(['convert', '-O', 'qcow2', f('top.qcow2'), f('p.qcow2')]).status, 0);
    must('qemu-img', ['check', f('p.qcow2')]);
    assert.equal(
      run('qemu-img', ['compare', f('p.qcow2'), f('top.qcow2')]).stdout,
      'Images are identical.\n',
    );
    assert.equal(p(['compare', f('flat.raw'), f('top.qcow2')]).stdout, 'Images are identical.\n');
  });

  it('a chain of growing sizes: map past the end of a shorter backing file says depth 0, as qemu-img', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    must('qemu-img', ['create', '-f', 'qcow2', f('g1.qcow2'), '1M']);
    qemuIoWrite(f('g1.qcow2'), 'qcow2', ['write -P 1 0 64k']);
    must('qemu-img', ['create', '-f', 'qcow2', '-b', 'g1.qcow2', '-F', 'qcow2', f('g2.qcow2'), '4M']);
    must('qemu-img', ['create', '-f', 'qcow2', '-b', 'g2.qcow2', '-F', 'qcow2', f('g3.qcow2'), '6M']);
    for (const top of ['g2.qcow2', 'g3.qcow2'])
      assert.deepEqual(JSON.parse(p(['map', '--json', f(top)]).stdout), qemuMap(f(top)), top);
  });

  it('info --backing-chain agrees with qemu-img info --backing-chain', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    must('qemu-img', ['create', '-f', 'qcow2', f('ib.qcow2'), '8M']);
    must('qemu-img', ['create', '-f', 'qcow2', '-b', 'ib.qcow2', '-F', 'qcow2', f('it.qcow2')]);
    qemuIoWrite(f('it.qcow2'), 'qcow2', ['write -P 1 1M 64k']);
    const theirs = JSON.parse(must('qemu-img', ['info', '--backing-chain', '--output=json', f('it.qcow2')]));
    const ours = JSON.parse(p(['info', '--backing-chain', '--json', f('it.qcow2')]).stdout);
    assert.equal(ours.length, theirs.length);
    ours.forEach((o: Record<string, unknown>, i: number) => {
      const q = theirs[i];
      assert.equal(o.format, q.format);
      assert.equal(o.virtualSize, q['virtual-size']);
      assert.equal(o.granularity, q['cluster-size']);
      assert.equal(o.allocatedSize, q['actual-size']);
      assert.equal(o.backingFilename, q['backing-filename']);
      assert.equal(String(o.filename).split('/').at(-1), String(q.filename).split('/').at(-1));
    });
  });

  it('convert -c to qcow2: compressed clusters, clean check, identical content', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    must('qemu-img', ['create', '-f', 'raw', f('c.raw'), '4M']);
    qemuIoWrite(f('c.raw'), 'raw', ['write -P 0x41 0 1M', 'write -P 0x42 2M 256k']);
    const r = p(['convert', '-c', '-O', 'qcow2', f('c.raw'), f('c.qcow2')]);
    assert.equal(r.status, 0, r.stderr);
    const check = must('qemu-img', ['check', f('c.qcow2')]);
    assert.match(check, /No errors were found/);
    assert.match(check, /100\.00% compressed clusters/, 'every data cluster is compressed');
    assert.equal(run('qemu-img', ['compare', f('c.raw'), f('c.qcow2')]).stdout, 'Images are identical.\n');
    assert.equal(p(['convert', '-O', 'qcow2', f('c.raw'), f('u.qcow2')]).status, 0);
    assert.ok(
      statSync(f('c.qcow2')).size + 1024 * K <= statSync(f('u.qcow2')).size,
      'patterned data compresses',
    );
  });

  it('convert into an nbd:// export writes in place, zeros included (nbdkit)', (t) => {
    if (!needPeers(t, 'nbdkit', 'qemu-img', 'qemu-io')) return;
    const sock = f('mem.sock');
    const pid = f('mem.pid');
    must('nbdkit', ['-U', sock, '-P', pid, 'memory', '4M']);
    try {
      const uri = `nbd+unix:///?socket=${sock}`;
      must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 4M', uri]); // old content everywhere
      must('qemu-img', ['create', '-f', 'raw', f('n.raw'), '4M']);
      qemuIoWrite(f('n.raw'), 'raw', ['write -P 7 1M 64k']);
      // Without --force an export is not overwritten (qemu-img asks for -n).
      const refused = p(['convert', '-O', 'raw', f('n.raw'), uri]);
      assert.equal(refused.status, 1);
      assert.match(refused.stderr, /an NBD export is written in place \(use --force to overwrite it\)/);
      must('qemu-io', ['-f', 'raw', '-c', 'read -P 0x55 0 4M', uri]); // untouched
      const r = p(['convert', '--force', '-O', 'raw', f('n.raw'), uri]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(
        run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', f('n.raw'), uri]).stdout,
        'Images are identical.\n',
      );
    } finally {
      process.kill(Number(readFileSync(pid, 'utf8')));
    }
  });

  it('images of different sizes: the same verdict as qemu-img', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    must('qemu-img', ['create', '-f', 'raw', f('small.raw'), '4M']);
    must('qemu-img', ['create', '-f', 'raw', f('big.raw'), '8M']);
    qemuIoWrite(f('small.raw'), 'raw', ['write -P 5 1M 4k']);
    qemuIoWrite(f('big.raw'), 'raw', ['write -P 5 1M 4k']);
    for (const [a, b] of [
      ['small.raw', 'big.raw'],
      ['big.raw', 'small.raw'],
    ]) {
      const ours = p(['compare', f(a), f(b)]);
      const theirs = run('qemu-img', ['compare', f(a), f(b)]);
      assert.equal(ours.status, theirs.status, `${a} vs ${b}`);
      assert.match(ours.stdout, /Images are identical\.\n$/);
    }
    // A difference in the longer one's tail, then one in the part both have: the same lines.
    for (const write of ['write -P 9 6M 512', 'write -P 8 2M 512']) {
      qemuIoWrite(f('big.raw'), 'raw', [write]);
      const ours = p(['compare', f('small.raw'), f('big.raw')]);
      const theirs = run('qemu-img', ['compare', f('small.raw'), f('big.raw')]);
      assert.equal(ours.status, theirs.status);
      assert.equal(ours.stdout, theirs.stdout, write);
    }
  });
});
