// acquire cases for `npm run bench` (format: see the top of scripts/bench.mjs).
// Targets from issue 7:
//   - acquire to raw with md5+sha1+sha256: at least 3x `dc3dd hash=md5
//     hash=sha1 hash=sha256` (dc3dd hashes one algorithm after another on one
//     core). platter runs with --no-verify: dc3dd does not re-read either.
//     The log goes to {out}.map, which the runner removes after each run
//     (acquire never overwrites, so a log left behind would stop the next run).
//     platter's image is on stable storage when it exits (it fdatasyncs the
//     destination, in the background during the copy and once at the end);
//     dc3dd leaves it dirty in the page cache. The peer 'dc3dd+fdatasync'
//     (no target) is dc3dd followed by `sync -d` of its image: the same
//     promise as platter's, for a like-for-like figure.
//   - acquire to E01 with fast compression: at least 1.5x `ewfacquire -c fast`,
//     on random (incompressible) and sparse (75 % zeros) data. The outputs are
//     segment sets (.E01, .E02 ...), so this is an `extra()` that runs each tool
//     in a fresh directory and removes it afterwards.
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
const MiB = 1 << 20;

export const cases = [
  {
    name: 'acquire raw md5+sha1+sha256',
    file: 'random',
    platter: ['acquire', '-q', '--no-verify', '-a', 'md5,sha1,sha256', '--log', '{out}.map', '{in}', '{out}'],
    peers: [
      { name: 'dc3dd', argv: ['dc3dd', 'if={in}', 'of={out}', 'hash=md5', 'hash=sha1', 'hash=sha256'] },
      {
        name: 'dc3dd+fdatasync',
        argv: [
          'sh',
          '-c',
          'dc3dd if="$1" of="$2" hash=md5 hash=sha1 hash=sha256 && sync -d "$2"',
          'sh',
          '{in}',
          '{out}',
        ],
      },
    ],
    target: { dc3dd: 3.0 },
    needs: ['dc3dd'],
  },
];

function timed(argv, cwd) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], argv.slice(1), { cwd, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stderr.trim().slice(-400)}`);
  return sec;
}

function bestOf(reps, dir, argv) {
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    best = Math.min(best, timed(argv, dir));
  }
  rmSync(dir, { recursive: true, force: true });
  return best;
}

export async function extra({ data, filters }) {
  const name = 'acquire ewf fast';
  if (filters.length && !filters.some((f) => name.includes(f) || f === 'acquire' || f === 'ewf')) return 0;
  for (const cmd of ['ewfacquire']) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) {
      console.log(`${name}: skipped (${cmd} missing)`);
      return 0;
    }
  }
  const reps = Math.max(1, Number(process.env.BENCH_REPS ?? 3));
  let missed = 0;
  for (const file of ['random.raw', 'sparse.raw']) {
    const input = join(data, file);
    const size = Number(spawnSync('stat', ['-c', '%s', input], { encoding: 'utf8' }).stdout.trim());
    if (!size) {
      console.log(`${name} ${file}: skipped (run a case on ${file} first so the runner makes it)`);
      continue;
    }
    const dir = join(data, 'acquire-ewf');
    const ours = bestOf(reps, dir, [
      process.execPath,
      join(root, 'bin/platter'),
      'acquire',
      '-q',
      '--no-verify',
      '-O',
      'ewf',
      '--compression',
      'fast',
      '-a',
      'md5',
      input,
      join(dir, 'p'),
    ]);
    const theirs = bestOf(reps, dir, ['ewfacquire', '-q', '-u', '-c', 'fast', '-t', join(dir, 'e'), input]);
    const rate = (s) => `${(size / MiB / s).toFixed(0)} MiB/s`;
    const ratio = theirs / ours;
    console.log(
      `${name}, ${file}: platter ${ours.toFixed(2)} s ${rate(ours)}; ewfacquire ${theirs.toFixed(2)} s ${rate(theirs)}; ratio ${ratio.toFixed(2)}x (target 1.5x)${ratio < 1.5 ? '  MISSED' : ''}`,
    );
    if (ratio < 1.5) missed++;
  }
  return missed;
}
