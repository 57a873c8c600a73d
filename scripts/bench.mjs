// npm run bench [-- FILTER...]
//
// Runs platter and its peers side by side, in one run, on the same files, and
// prints MiB/s, the ratio platter ÷ peer and the peak RSS of each (GNU time's
// %M). Each measurement is the best of BENCH_REPS runs (default 3), the tools
// of a case interleaved (in reverse order every other round) and each run after
// `sync`: the machine may be shared, and the best run is the least disturbed one.
// The ratio of the median runs is printed beside it ("median"): on a VM whose
// runs spread widely, the best run favours the tool that spreads more, and the
// median says which is faster in a typical run. Targets are judged on the best.
//
// Files (made once in BENCH_DATA, default ./bench-data, and reused):
//   random.raw  2 GiB of random bytes
//   sparse.raw  2 GiB sparse, 25 % data (1 MiB of random data every 4 MiB)
//   zero.raw    2 GiB of zeros, written (allocated: zero detection, not holes)
//   huge.raw    64 GiB sparse, 64 MiB of data scattered (peak RSS, holes skipped)
//
// Cases are pluggable: every scripts/bench/*.mjs exports `cases`, an array of
//
//   {
//     name:    'convert raw→raw',         // what is measured
//     file:    'random',                  // random | sparse | zero | huge (the input)
//     platter: ['convert', '-O', 'raw', '{in}', '{out}'],   // platter's argv
//     peers:   [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'raw', '{in}', '{out}'] }],
//     target:  { 'qemu-img': 1.0 },       // optional: minimum ratio per peer
//     output:  true,                      // optional: {out} is a file; report its allocated size
//     needs:   ['qemu-img'],              // optional: commands that must exist (else skipped)
//     inputs:  ['/path/base.qcow2'],       // optional: files read that are not in argv
//   }
//
// Before each run the files it reads are read once into the page cache (untimed).
//
// In argv, {in} is the input file, {in2} a copy of it (another file with the
// same content, made once with cp --sparse=always), {out} a fresh output path
// (removed after each run), {data} the data directory. A format engineer adds a file such as
// scripts/bench/qcow2.mjs with cases like convert raw→qcow2 vs qemu-img.
//
// A case file may also export `extra({ data, filters })`: a measurement that
// does not fit the table (it prints its own lines after it and returns the
// number of targets it missed).
//
// FILTER arguments keep the cases whose name, file or file name contains one
// of them: `npm run bench -- hash`, `npm run bench -- sparse convert`.
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
// This workplace sets NODE_EXTRA_CA_CERTS to the whole system bundle; Node.js
// parses it at every start (`node -e 0`: 0.13 s with it, 0.04 s without), which
// no tool here needs (none makes TLS connections) and a user's machine does not
// normally pay. Every tool, peers included, runs without it (children inherit).
delete process.env.NODE_EXTRA_CA_CERTS;
const data = process.env.BENCH_DATA ?? join(root, 'bench-data');
const reps = Math.max(1, Number(process.env.BENCH_REPS ?? 3));
const MiB = 1 << 20;
const GiB = 1 << 30;

const FILES = {
  random: { name: 'random.raw', size: 2 * GiB, make: makeRandom },
  sparse: { name: 'sparse.raw', size: 2 * GiB, make: makeSparse },
  zero: { name: 'zero.raw', size: 2 * GiB, make: makeZero },
  huge: { name: 'huge.raw', size: 64 * GiB, make: makeHuge },
};

function writeAll(path, size, fill) {
  const fd = openSync(path, 'w');
  try {
    fill(fd);
  } finally {
    closeSync(fd);
  }
  // Extend to the full size without writing (a sparse tail stays sparse).
  spawnSync('truncate', ['-s', String(size), path]);
}

function makeRandom(path, size) {
  const buf = Buffer.alloc(16 * MiB);
  writeAll(path, size, (fd) => {
    for (let off = 0; off < size; off += buf.length) writeSync(fd, randomFillSync(buf), 0, buf.length, off);
  });
}

function makeSparse(path, size) {
  const buf = Buffer.alloc(MiB);
  writeAll(path, size, (fd) => {
    for (let off = 0; off < size; off += 4 * MiB)
      writeSync(fd, randomFillSync(buf), 0, buf.length, off + 3 * MiB);
  });
}

function makeZero(path, size) {
  const buf = Buffer.alloc(16 * MiB);
  writeAll(path, size, (fd) => {
    for (let off = 0; off < size; off += buf.length) writeSync(fd, buf, 0, buf.length, off);
  });
}

function makeHuge(path, size) {
  const buf = Buffer.alloc(MiB);
  writeAll(path, size, (fd) => {
    for (let off = 0; off < size; off += GiB)
      writeSync(fd, randomFillSync(buf), 0, buf.length, off + 512 * MiB);
  });
}

function ensureFile(kind) {
  const f = FILES[kind];
  if (!f) throw new Error(`unknown bench file kind '${kind}'`);
  const path = join(data, f.name);
  if (existsSync(path) && statSync(path).size === f.size) return path;
  process.stderr.write(`making ${path} (${f.size / GiB} GiB)...\n`);
  f.make(path, f.size);
  return path;
}

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const subst = (argv, vars) => argv.map((a) => a.replace(/\{(in2|in|out|data)\}/g, (_, k) => vars[k]()));

function ensureCopy(path) {
  const copy = path.replace(/\.raw$/, '.copy.raw');
  if (!existsSync(copy) || statSync(copy).size !== statSync(path).size) {
    process.stderr.write(`making ${copy}...\n`);
    spawnSync('cp', ['--sparse=always', path, copy]);
  }
  return copy;
}

/** Runs argv under GNU time; returns seconds, peak RSS (KiB) and the output's allocated bytes. */
function measure(argv, vars, output) {
  const timeFile = join(data, `.time-${process.pid}`);
  const r = spawnSync('/usr/bin/time', ['-o', timeFile, '-f', '%e %M', ...subst(argv, vars)], {
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
    maxBuffer: 64 * MiB,
  });
  if (r.status !== 0)
    throw new Error(`${subst(argv, vars).join(' ')} exited ${r.status}: ${r.stderr.trim().slice(-500)}`);
  const [sec, rss] = spawnSync('cat', [timeFile], { encoding: 'utf8' })
    .stdout.trim()
    .split(/\s+/)
    .map(Number);
  let allocated;
  const out = vars.out();
  if (output && existsSync(out)) allocated = statSync(out).blocks * 512;
  rmSync(out, { force: true, recursive: true });
  rmSync(`${out}.map`, { force: true }); // a rescue's mapfile (scripts/bench/rescue.mjs)
  return { sec, rss, allocated };
}

/**
 * Runs every tool of a case `reps` times, interleaved (platter, peer, peer,
 * platter, ...) so that a burst of load on the shared machine hits all of them
 * alike, with `sync` before each run so that no run pays for another's dirty
 * pages. Returns the best time and the highest RSS of each tool (or its error).
 */
function bestOfInterleaved(tools, vars, output, warm) {
  const out = tools.map(() => undefined);
  for (let i = 0; i < reps; i++) {
    // Odd rounds run the tools in reverse order: none is always the first after a pause.
    const order = tools.map((_, t) => (i % 2 === 0 ? t : tools.length - 1 - t));
    for (const t of order) {
      const argv = tools[t];
      if (out[t] instanceof Error) continue;
      warmUp(warm(argv));
      spawnSync('sync');
      let m;
      try {
        m = measure(argv, vars, output);
      } catch (e) {
        out[t] = e;
        return;
      }
      const b = out[t];
      const secs = [...(b?.secs ?? []), m.sec];
      out[t] =
        !b || m.sec < b.sec
          ? { ...m, secs, rss: Math.max(m.rss, b?.rss ?? 0) }
          : { ...b, secs, rss: Math.max(b.rss, m.rss) };
    }
  }
  return out;
}

/** The median of a list of times (the mean of the middle two for an even count). */
function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/**
 * Reads the inputs of a run into the page cache, untimed, so that every run
 * finds them there: a machine may evict file pages that have been idle a while
 * (the VM of BENCHMARKS.md pages out what was not touched for a minute), and the
 * first run after a pause would pay the disk for everyone. cp reads only the
 * data of a sparse file.
 */
function warmUp(paths) {
  for (const p of paths) spawnSync('cp', ['--sparse=always', p, '/dev/null']);
}

/** Optional `extra({ data, filters })` exports of case files: custom measurements run after the table; each returns the number of targets it missed. */
const extras = [];

async function loadCases() {
  const dir = join(root, 'scripts/bench');
  const out = [];
  for (const f of readdirSync(dir)
    .filter((x) => x.endsWith('.mjs'))
    .sort()) {
    const mod = await import(join(dir, f));
    for (const c of mod.cases ?? []) out.push({ ...c, source: f });
    if (mod.extra) extras.push(mod.extra);
  }
  return out;
}

const fmtRate = (bytes, sec) => (sec > 0 ? `${(bytes / MiB / sec).toFixed(0)} MiB/s` : '∞');
const fmtMiB = (b) => (b === undefined ? '' : `${(b / MiB).toFixed(1)} MiB`);

const filters = process.argv.slice(2);
const all = await loadCases();
const chosen = all.filter(
  (c) =>
    filters.length === 0 ||
    filters.some((f) => `${c.name} ${c.file} ${FILES[c.file]?.name} ${c.source}`.includes(f)),
);
if (chosen.length === 0 && extras.length === 0) {
  console.error(`no bench case matches ${filters.join(' ')}`);
  process.exit(1);
}
mkdirSync(data, { recursive: true });
// PLATTER_BIN: another launcher (e.g. a private build while dist/ is being rebuilt).
const platterBin = [process.execPath, process.env.PLATTER_BIN ?? join(root, 'bin/platter')];
if (!existsSync(join(root, 'dist/cli/main.js')))
  spawnSync(process.execPath, [join(root, 'scripts/build.mjs')], { stdio: 'inherit' });

const cpu = cpus()[0]?.model ?? 'unknown';
console.log(
  `platter bench: ${cpus().length} CPUs (${cpu}), node ${process.version}, best of ${reps}, load average ${loadavg()[0].toFixed(1)}, data in ${data}`,
);
console.log('');
const header = ['case', 'file', 'tool', 'time', 'rate', 'ratio', 'median', 'peak RSS', 'allocated', 'target'];
const rows = [header];
let failed = 0;
for (const c of chosen) {
  const missing = (c.needs ?? c.peers.map((p) => p.argv[0])).filter((x) => !has(x));
  if (missing.length) {
    rows.push([c.name, c.file, `skipped: ${missing.join(', ')} missing`]);
    continue;
  }
  const input = ensureFile(c.file);
  const size = FILES[c.file].size;
  const vars = {
    in: () => input,
    in2: () => ensureCopy(input),
    out: () => join(data, `out-${process.pid}.tmp`),
    data: () => data,
  };
  // The files a run reads: its arguments that are files in the data directory (not
  // its output), and those a case names in `inputs` (a backing chain's lower layers).
  const warm = (argv) =>
    [...new Set([...subst(argv, vars), ...(c.inputs ?? [])])].filter(
      (a) => a.startsWith(data) && a !== vars.out() && existsSync(a) && statSync(a).isFile(),
    );
  const results = bestOfInterleaved(
    [[...platterBin, ...c.platter], ...c.peers.map((p) => p.argv)],
    vars,
    c.output,
    warm,
  );
  const ours = results[0];
  if (ours instanceof Error) {
    rows.push([c.name, c.file, 'platter', `FAILED: ${String(ours.message).split('\n')[0].slice(-120)}`]);
    failed++;
    continue;
  }
  rows.push([
    c.name,
    c.file,
    'platter',
    `${ours.sec.toFixed(2)} s`,
    fmtRate(size, ours.sec),
    '',
    `${median(ours.secs).toFixed(2)} s`,
    `${(ours.rss / 1024).toFixed(0)} MiB`,
    fmtMiB(ours.allocated),
    '',
  ]);
  for (const [pi, peer] of c.peers.entries()) {
    const theirs = results[pi + 1];
    if (theirs instanceof Error) {
      rows.push(['', '', peer.name, `FAILED: ${String(theirs.message).split('\n')[0].slice(-120)}`]);
      continue;
    }
    const ratio = ours.sec > 0 ? theirs.sec / ours.sec : Number.POSITIVE_INFINITY;
    const want = c.target?.[peer.name];
    const verdict = want === undefined ? '' : ratio >= want ? `≥${want} ok` : `≥${want} MISSED`;
    if (want !== undefined && ratio < want) failed++;
    rows.push([
      '',
      '',
      peer.name,
      `${theirs.sec.toFixed(2)} s`,
      fmtRate(size, theirs.sec),
      `${ratio.toFixed(2)}×`,
      `${(median(theirs.secs) / median(ours.secs)).toFixed(2)}× (${median(theirs.secs).toFixed(2)} s)`,
      `${(theirs.rss / 1024).toFixed(0)} MiB`,
      fmtMiB(theirs.allocated),
      verdict,
    ]);
  }
  process.stderr.write(`done: ${c.name} (${c.file})\n`);
  if (ours.rss / 1024 >= 200) {
    rows.push(['', '', 'platter', '', '', '', '', 'RSS ≥ 200 MiB: MISSED']);
    failed++;
  }
}
const widths = header.map((_, i) => Math.max(...rows.map((r) => String(r[i] ?? '').length)));
for (const r of rows)
  console.log(
    r
      .map((x, i) => String(x ?? '').padEnd(widths[i]))
      .join('  ')
      .trimEnd(),
  );
console.log('');
for (const extra of extras) failed += await extra({ data, filters });
console.log('');
console.log(failed ? `${failed} target(s) missed` : 'all targets met');
rmSync(join(data, `.time-${process.pid}`), { force: true });
