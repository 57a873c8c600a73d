// rescue cases for `npm run bench` (format: see the top of scripts/bench.mjs).
// Targets from issue 8: on a healthy 2 GiB source at least 1.0× GNU ddrescue's
// throughput; on a source with 1 % of its sectors bad in clusters, no more
// reads of bad sectors than ddrescue makes with the same options, and at least
// as fast. The bad-sector comparison is `extra()`: it serves one source through
// nbdkit's ddrescue filter (bad sectors fail with EIO) and log filter (every
// read and its result), as a file through nbdfuse, and runs both tools on it
// with direct I/O, counting failed reads in the log.
import { spawn, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;

export const cases = [
  {
    name: 'rescue healthy source',
    file: 'random',
    platter: ['rescue', '-q', '{in}', '{out}', '{out}.map'],
    peers: [{ name: 'ddrescue', argv: ['ddrescue', '-q', '{in}', '{out}', '{out}.map'] }],
    target: { ddrescue: 1.0 },
    needs: ['ddrescue'],
  },
];

const MiB = 1 << 20;
const SIZE = 256 * MiB;
const SECTOR = 512;

/** 1 % of the sectors bad, in clusters of 8..128 sectors, at positions fixed by a seed. */
function truthMap() {
  let seed = 12345;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const badTotal = SIZE / 100;
  const bad = [];
  let sum = 0;
  while (sum < badTotal) {
    const len = (8 + Math.floor(rnd() * 121)) * SECTOR;
    const pos = Math.floor((rnd() * (SIZE - len)) / SECTOR) * SECTOR;
    if (bad.some(([a, l]) => pos < a + l + SECTOR && a < pos + len + SECTOR)) continue;
    bad.push([pos, len]);
    sum += len;
  }
  bad.sort((a, b) => a[0] - b[0]);
  const lines = ['0x0 +'];
  let at = 0;
  for (const [a, l] of bad) {
    if (a > at) lines.push(`0x${at.toString(16)} 0x${(a - at).toString(16)} +`);
    lines.push(`0x${a.toString(16)} 0x${l.toString(16)} -`);
    at = a + l;
  }
  if (at < SIZE) lines.push(`0x${at.toString(16)} 0x${(SIZE - at).toString(16)} +`);
  return { text: `${lines.join('\n')}\n`, badBytes: sum };
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function runOne(dir, src, truth, name, argv) {
  const mnt = join(dir, `mnt-${name}`);
  const log = join(dir, `${name}.log`);
  mkdirSync(mnt, { recursive: true });
  rmSync(log, { force: true });
  const fuse = spawn(
    'nbdfuse',
    [
      join(mnt, 'disk'),
      '--command',
      'nbdkit',
      '-s',
      '--exit-with-parent',
      '--filter=log',
      '--filter=ddrescue',
      'file',
      src,
      `ddrescue-mapfile=${truth}`,
      `logfile=${log}`,
    ],
    { stdio: 'ignore' },
  );
  const disk = join(mnt, 'disk');
  for (let i = 0; i < 100 && !existsSync(disk); i++) await sleep(50);
  const out = join(dir, `${name}.out`);
  const map = join(dir, `${name}.map`);
  rmSync(out, { force: true });
  rmSync(map, { force: true });
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], [...argv.slice(1), disk, out, map], {
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
  });
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  spawnSync('fusermount3', ['-u', mnt]);
  await new Promise((res) => (fuse.exitCode !== null ? res() : fuse.once('exit', res)));
  if (r.status !== 0) throw new Error(`${name} exited ${r.status}: ${r.stderr}`);
  const lines = readFileSync(log, 'utf8').split('\n');
  const reads = lines.filter((l) => / Read id=\d+ offset=/.test(l)).length;
  const failed = lines.filter((l) => /\.\.\.Read id=\d+ return=-?[1-9]/.test(l)).length;
  const mapText = readFileSync(map, 'utf8');
  const blocks = mapText
    .split('\n')
    .filter((l) => /^0x[0-9A-Fa-f]+\s+0x/.test(l))
    .map((l) =>
      l
        .trim()
        .split(/\s+/)
        .map((x, i) => (i < 2 ? Number(x) : x))
        .join(' '),
    );
  return { sec, reads, failed, blocks };
}

export async function extra({ data, filters }) {
  if (filters.length && !filters.some((f) => 'rescue bad sectors'.includes(f) || f === 'rescue')) return 0;
  for (const cmd of ['nbdfuse', 'nbdkit', 'ddrescue']) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) {
      console.log(`rescue with 1 % bad sectors: skipped (${cmd} missing)`);
      return 0;
    }
  }
  const dir = join(data, 'rescue-bad');
  mkdirSync(dir, { recursive: true });
  const src = join(dir, 'src.raw');
  if (!existsSync(src)) {
    const buf = Buffer.alloc(SIZE);
    randomFillSync(buf);
    writeFileSync(src, buf);
  }
  const truth = join(dir, 'truth.map');
  const { text, badBytes } = truthMap();
  writeFileSync(truth, text);
  const platter = [process.execPath, join(root, 'bin/platter'), 'rescue', '-q', '-d'];
  // Best of BENCH_REPS runs, the two tools interleaved (like the table): the
  // machine may be shared. Reads and maps are the same in every run.
  const reps = Math.max(1, Number(process.env.BENCH_REPS ?? 3));
  const runs = { platter: [], ddrescue: [] };
  for (let i = 0; i < reps; i++) {
    runs.platter.push(await runOne(dir, src, truth, 'platter', platter));
    runs.ddrescue.push(await runOne(dir, src, truth, 'ddrescue', ['ddrescue', '-q', '-d']));
  }
  // The time is the best run's; reads and failed reads the most any run made.
  const summary = (rs) => ({
    sec: Math.min(...rs.map((r) => r.sec)),
    reads: Math.max(...rs.map((r) => r.reads)),
    failed: Math.max(...rs.map((r) => r.failed)),
    blocks: rs.map((r) => JSON.stringify(r.blocks)),
  });
  const ours = summary(runs.platter);
  const theirs = summary(runs.ddrescue);
  const same = [...ours.blocks, ...theirs.blocks].every((b) => b === theirs.blocks[0]);
  const rate = (s) => `${(SIZE / MiB / s).toFixed(0)} MiB/s`;
  console.log(
    `rescue, 256 MiB source with 1 % bad sectors in clusters (${badBytes} bad bytes), direct I/O through nbdfuse, best of ${reps}:`,
  );
  console.log(
    `  platter   ${ours.sec.toFixed(2)} s  ${rate(ours.sec)}  reads ${ours.reads}  failed reads ${ours.failed}`,
  );
  console.log(
    `  ddrescue  ${theirs.sec.toFixed(2)} s  ${rate(theirs.sec)}  reads ${theirs.reads}  failed reads ${theirs.failed}`,
  );
  console.log(
    `  ratio ${(theirs.sec / ours.sec).toFixed(2)}×; failed reads platter/ddrescue ${(ours.failed / theirs.failed).toFixed(2)}; final maps ${same ? 'identical' : 'DIFFER'}`,
  );
  let missed = 0;
  if (ours.failed > theirs.failed) missed++;
  if (ours.sec > theirs.sec) missed++;
  if (!same) missed++;
  return missed;
}
