/**
 * platter rescue against GNU ddrescue, on a failing drive simulated by nbdkit's
 * ddrescue filter behind nbdfuse (reads of bad sectors return EIO).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it, type TestContext } from 'node:test';
import { failingFile } from '../helpers/nbdfuse.js';
import { hasPeer, must, needPeers, PLATTER, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const SIZE = 8 << 20;
// Bad sectors: a 4 KiB run, a 1 KiB run, isolated sectors, the very last sector.
const BAD: Array<[number, number]> = [
  [0x100000, 0x1000],
  [0x301000, 0x400],
  [0x480200, 0x200],
  [0x480e00, 0x200],
  [SIZE - 0x1000, 0x200],
];

function truthMap(): string {
  const lines = ['# truth', '0x0 + 1'];
  let pos = 0;
  for (const [a, len] of BAD) {
    if (a > pos) lines.push(`0x${pos.toString(16)} 0x${(a - pos).toString(16)} +`);
    lines.push(`0x${a.toString(16)} 0x${len.toString(16)} -`);
    pos = a + len;
  }
  if (pos < SIZE) lines.push(`0x${pos.toString(16)} 0x${(SIZE - pos).toString(16)} +`);
  return `${lines.join('\n')}\n`;
}

const blockLines = (file: string): string[] =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => /^0x[0-9A-Fa-f]+\s+0x[0-9A-Fa-f]+\s+[?*/+-]$/.test(l.trim()))
    .map((l) =>
      l
        .trim()
        .split(/\s+/)
        .map((x, i) => (i < 2 ? Number(x).toString(16) : x))
        .join(' '),
    );

/** /dev/fuse is needed for the failing file: missing, the test skips loudly (fails under CI). */
function fuse(t: TestContext): boolean {
  if (existsSync('/dev/fuse')) return true;
  if (process.env.CI) throw new Error('/dev/fuse is missing');
  t.skip('/dev/fuse is missing');
  return false;
}

/** Starts a slow rescue (4 KiB clusters) in the background, to be interrupted. */
function startRescue(source: string, img: string, map: string, extra: string[] = []) {
  return spawn(process.execPath, [PLATTER, 'rescue', '-q', '-d', '-c', '8', ...extra, source, img, map], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
}

/** Waits until a rescue has written its first mapfile and read for a moment. */
async function started(map: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(map); i++) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 500));
}

describe('rescue vs GNU ddrescue', { concurrency: false }, () => {
  const dir = tempDir();
  const src = join(dir, 'src.img');
  const truth = join(dir, 'truth.map');
  let expected: Buffer;

  before(() => {
    const data = randomBytes(SIZE);
    writeFileSync(src, data);
    writeFileSync(truth, truthMap());
    expected = Buffer.from(data);
    for (const [a, len] of BAD) expected.fill(0, a, a + len);
  });

  it('a complete default run: block lines equal ddrescue -H, data equals the source', async (t) => {
    if (!needPeers(t, 'nbdfuse', 'nbdkit', 'ddrescue', 'ddrescuelog') || !fuse(t)) return;
    // Reference: GNU ddrescue's test mode on the same layout.
    must('ddrescue', ['-q', '-H', truth, src, join(dir, 'ref.img'), join(dir, 'ref.map')]);
    const f = await failingFile(dir, src, truth);
    try {
      const r = platter(['rescue', '-d', '--json', f.path, join(dir, 'out.img'), join(dir, 'out.map')]);
      assert.equal(r.status, 0, r.stderr);
      const j = JSON.parse(r.stdout);
      assert.equal(
        j.badSize,
        BAD.reduce((n, [, l]) => n + l, 0),
      );
      assert.deepEqual(j.bad, [
        { offset: 0x100000, length: 0x1000 },
        { offset: 0x301000, length: 0x400 },
        { offset: 0x480200, length: 0x200 },
        { offset: 0x480e00, length: 0x200 },
        { offset: SIZE - 0x1000, length: 0x200 },
      ]);
    } finally {
      await f.unmount();
    }
    assert.deepEqual(blockLines(join(dir, 'out.map')), blockLines(join(dir, 'ref.map')));
    assert.ok(
      readFileSync(join(dir, 'out.img')).equals(expected),
      'rescued data equals the source, bad sectors zero',
    );
    const status = must('ddrescuelog', ['-t', join(dir, 'out.map')]);
    assert.match(status, /bad-sector:\s+6656 B,\s+in\s+5 area/);
    assert.match(status, /non-tried:\s+0 B/);

    // GNU ddrescue resumes from platter's mapfile and finds nothing left to read.
    const reads = join(dir, 'reads.log');
    must('ddrescue', [
      '-q',
      '-H',
      truth,
      `--log-reads=${reads}`,
      src,
      join(dir, 'out.img'),
      join(dir, 'out.map'),
    ]);
    const readLines = readFileSync(reads, 'utf8')
      .split('\n')
      .filter((l) => /^0x/.test(l));
    assert.deepEqual(readLines, [], 'ddrescue had nothing left to read');
  });

  it('the synchronous and the thread-pool I/O paths make the same reads (nbdkit log) and maps', async (t) => {
    if (!needPeers(t, 'nbdfuse', 'nbdkit', 'ddrescue') || !fuse(t)) return;
    if (!existsSync(join(dir, 'ref.map')))
      must('ddrescue', ['-q', '-H', truth, src, join(dir, 'ref.img'), join(dir, 'ref.map')]);
    const counts: Array<{ reads: number; failed: number }> = [];
    for (const async of ['1', '0']) {
      const log = join(dir, `reads-${async}.log`);
      const f = await failingFile(dir, src, truth, { logFile: log });
      try {
        const img = join(dir, `paths-${async}.img`);
        const map = join(dir, `paths-${async}.map`);
        const r = platter(['rescue', '-q', '-d', f.path, img, map], {
          env: { PLATTER_RESCUE_ASYNC: async },
        });
        assert.equal(r.status, 0, r.stderr);
        assert.deepEqual(blockLines(map), blockLines(join(dir, 'ref.map')), `PLATTER_RESCUE_ASYNC=${async}`);
        assert.ok(readFileSync(img).equals(expected));
      } finally {
        await f.unmount();
      }
      const lines = readFileSync(log, 'utf8').split('\n');
      counts.push({
        reads: lines.filter((l) => / Read id=\d+ offset=/.test(l)).length,
        failed: lines.filter((l) => /\.\.\.Read id=\d+ return=-?[1-9]/.test(l)).length,
      });
    }
    assert.ok(counts[0].failed > 0, 'bad sectors were read');
    assert.deepEqual(counts[1], counts[0], 'synchronous path: the same reads and failed reads');
  });

  it('resumes a partial GNU ddrescue run (stopped after its first read error) to the same result', async (t) => {
    if (!needPeers(t, 'nbdfuse', 'nbdkit', 'ddrescue') || !fuse(t)) return;
    const img = join(dir, 'partial.img');
    const map = join(dir, 'partial.map');
    const r = run('ddrescue', ['-q', '-X', '1', '-H', truth, src, img, map]);
    assert.equal(r.status, 1, 'ddrescue stops at the read-error limit');
    assert.ok(
      blockLines(map).some((l) => l.endsWith('?')),
      'ddrescue left non-tried areas',
    );
    const f = await failingFile(dir, src, truth);
    try {
      const p = platter(['rescue', '-q', '-d', f.path, img, map]);
      assert.equal(p.status, 0, p.stderr);
    } finally {
      await f.unmount();
    }
    assert.deepEqual(blockLines(map), blockLines(join(dir, 'ref.map')));
    assert.ok(readFileSync(img).equals(expected));
  });

  it('kill -9 mid-rescue, then resume: same final image and map', async (t) => {
    if (!needPeers(t, 'nbdfuse', 'nbdkit') || !fuse(t)) return;
    const img = join(dir, 'killed.img');
    const map = join(dir, 'killed.map');
    const f = await failingFile(dir, src, truth, { delayReadMs: 3 });
    try {
      const child = startRescue(f.path, img, map, ['--mapfile-interval', '0.1']);
      await started(map);
      assert.equal(child.exitCode, null, 'still running when killed');
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      const mid = blockLines(map);
      assert.ok(
        mid.some((l) => l.endsWith('?')),
        'the kill left work to do',
      );
      const p = platter(['rescue', '-q', '-d', f.path, img, map]);
      assert.equal(p.status, 0, p.stderr);
    } finally {
      await f.unmount();
    }
    assert.deepEqual(blockLines(map), blockLines(join(dir, 'ref.map')));
    assert.ok(readFileSync(img).equals(expected));
  });

  it('SIGINT saves the mapfile and exits; the rerun completes', async (t) => {
    if (!needPeers(t, 'nbdfuse', 'nbdkit') || !fuse(t)) return;
    const img = join(dir, 'int.img');
    const map = join(dir, 'int.map');
    const f = await failingFile(dir, src, truth, { delayReadMs: 3 });
    try {
      const child = startRescue(f.path, img, map);
      let err = '';
      child.stderr.on('data', (d) => {
        err += d;
      });
      await started(map);
      child.kill('SIGINT');
      const code = await new Promise((r) => child.once('exit', r));
      assert.equal(code, 1);
      assert.match(err, /^platter: error: interrupted: mapfile saved/m);
      assert.ok(blockLines(map).some((l) => l.endsWith('?')));
      const p = platter(['rescue', '-q', '-d', f.path, img, map]);
      assert.equal(p.status, 0, p.stderr);
    } finally {
      await f.unmount();
    }
    assert.deepEqual(blockLines(map), blockLines(join(dir, 'ref.map')));
  });

  it('from nbd:// (nbdkit ddrescue filter over a unix socket) into a sparse qcow2', async (t) => {
    if (!needPeers(t, 'nbdkit', 'qemu-img') || !fuse(t)) return;
    const sock = join(dir, 'nbd.sock');
    const nbdkit = spawn(
      'nbdkit',
      ['-f', '-U', sock, '--filter=ddrescue', 'file', src, `ddrescue-mapfile=${truth}`],
      {
        stdio: 'ignore',
      },
    );
    try {
      for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      const out = join(dir, 'nbd.qcow2');
      const map = join(dir, 'nbd.map');
      const r = platter(['rescue', '-q', '-O', 'qcow2', `nbd+unix:///?socket=${sock}`, out, map]);
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(blockLines(map), blockLines(join(dir, 'ref.map')));
      must('qemu-img', ['check', '-q', out]);
      must('qemu-img', ['convert', '-O', 'raw', out, join(dir, 'nbd.raw')]);
      assert.ok(readFileSync(join(dir, 'nbd.raw')).equals(expected));
    } finally {
      nbdkit.kill('SIGTERM');
      await new Promise((r) => nbdkit.once('exit', r));
    }
  });

  it('from a loop device on the failing file: direct I/O records bad sectors exactly', async (t) => {
    if (!needPeers(t, 'nbdfuse', 'nbdkit', 'losetup') || !fuse(t)) return;
    const f = await failingFile(dir, src, truth);
    let loop = '';
    try {
      const l = run('losetup', ['-f', '--show', '-r', '--direct-io=on', f.path]);
      if (l.status !== 0) {
        if (process.env.CI) assert.fail(`losetup failed: ${l.stderr}`);
        t.skip(`no loop device here: ${l.stderr.trim()}`);
        return;
      }
      loop = l.stdout.trim();
      const out = join(dir, 'loop.img');
      const map = join(dir, 'loop.map');
      const r = platter(['rescue', '-q', loop, out, map]);
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(blockLines(map), blockLines(join(dir, 'ref.map')));
      assert.ok(readFileSync(out).equals(expected));
    } finally {
      if (loop) run('losetup', ['-d', loop]);
      await f.unmount();
    }
  });
});

describe('rescue: bad input', () => {
  const dir = tempDir();
  const src = join(dir, 'src.img');
  writeFileSync(src, randomBytes(1 << 20));

  const oneError = (r: { status: number; stderr: string }, re: RegExp): void => {
    assert.equal(r.status, 1);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^platter: error: /);
    assert.match(lines[0], re);
  };

  it('a malformed mapfile', () => {
    writeFileSync(join(dir, 'bad.map'), '0x0 ?\n0x0 0x400 Q\n');
    oneError(platter(['rescue', src, join(dir, 'o1.img'), join(dir, 'bad.map')]), /bad\.map: line 2/);
    assert.equal(existsSync(join(dir, 'o1.img')), false, 'nothing created');
  });

  it('an overlapping mapfile', () => {
    writeFileSync(join(dir, 'ov.map'), '0x0 ?\n0x0 0x80000 +\n0x40000 0x80000 ?\n');
    oneError(platter(['rescue', src, join(dir, 'o2.img'), join(dir, 'ov.map')]), /overlaps/);
  });

  it('a mapfile for a different size', () => {
    writeFileSync(join(dir, 'sz.map'), '0x0 ?\n0x0 0x200000 ?\n');
    oneError(platter(['rescue', src, join(dir, 'o3.img'), join(dir, 'sz.map')]), /another size/);
  });

  it('an existing destination without a mapfile is never overwritten', () => {
    const dst = join(dir, 'exists.img');
    writeFileSync(dst, 'precious');
    oneError(platter(['rescue', src, dst, join(dir, 'new.map')]), /never overwrites/);
    assert.equal(readFileSync(dst, 'utf8'), 'precious');
  });

  it('a destination image shorter than the rescue needs', (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const dst = join(dir, 'short.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', dst, '64K']);
    writeFileSync(join(dir, 'short.map'), `0x0 ?\n0x0 0x${(1 << 20).toString(16)} ?\n`);
    oneError(platter(['rescue', src, dst, join(dir, 'short.map')]), /shorter than/);
  });

  it('a raw destination left short by GNU ddrescue is extended on resume', () => {
    const dst = join(dir, 'grow.img');
    const data = readFileSync(src);
    writeFileSync(dst, data.subarray(0, 4096));
    writeFileSync(join(dir, 'grow.map'), '0x1000 ?\n0x0 0x1000 +\n');
    const r = platter(['rescue', '-q', src, dst, join(dir, 'grow.map')]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(dst).equals(data));
  });

  it('a missing source', () => {
    oneError(
      platter(['rescue', join(dir, 'nope.img'), join(dir, 'o4.img'), join(dir, 'o4.map')]),
      /nope\.img/,
    );
  });
});

describe('mapview', () => {
  const dir = tempDir();
  it('draws a PNG of a mapfile', () => {
    writeFileSync(
      join(dir, 'm.map'),
      '0x0 +\n0x0 0x100000 +\n0x100000 0x1000 -\n0x101000 0x1000 /\n0x102000 0xFE000 ?\n',
    );
    const r = platter(['mapview', join(dir, 'm.map'), '--png', join(dir, 'm.png')]);
    assert.equal(r.status, 0, r.stderr);
    const png = readFileSync(join(dir, 'm.png'));
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.equal(png.readUInt32BE(16), 640);
    assert.equal(png.readUInt32BE(20), 320);
    if (hasPeer('file')) assert.match(must('file', [join(dir, 'm.png')]), /PNG image data, 640 x 320/);
  });
});
