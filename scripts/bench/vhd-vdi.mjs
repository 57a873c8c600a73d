// VHD and VDI cases for `npm run bench` (format: see the top of scripts/bench.mjs).
// Targets from issue 5: convert raw→vhd (dynamic), raw→vdi (dynamic) and back
// at least 1.0× qemu-img (qemu calls VHD "vpc").
//
// The →raw cases need VHD/VDI inputs: they are made once, with qemu-img, from
// the bench's sparse.raw as {data}/sparse.vhd and {data}/sparse.vdi (so they
// exist from the second run on, or as soon as another case has made sparse.raw).
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
const data = process.env.BENCH_DATA ?? join(root, 'bench-data');
const sparseRaw = join(data, 'sparse.raw');
const haveQemu = spawnSync('sh', ['-c', 'command -v qemu-img']).status === 0;

function input(fmt, qemuFmt) {
  const path = join(data, `sparse.${fmt}`);
  if (existsSync(path)) return path;
  if (!haveQemu || !existsSync(sparseRaw) || statSync(sparseRaw).size !== 2 ** 31) return undefined;
  const r = spawnSync('qemu-img', ['convert', '-O', qemuFmt, sparseRaw, path], { stdio: 'ignore' });
  return r.status === 0 ? path : undefined;
}

const to = (fmt, qemuFmt, file) => ({
  name: `convert raw→${fmt} (dynamic)`,
  file,
  platter: ['convert', '-O', fmt, '{in}', '{out}'],
  peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', qemuFmt, '{in}', '{out}'] }],
  target: { 'qemu-img': 1.0 },
  output: true,
  needs: ['qemu-img'],
});

const back = (fmt, qemuFmt) => {
  const src = input(fmt, qemuFmt) ?? join(data, `sparse.${fmt}`);
  return {
    name: `convert ${fmt}→raw`,
    file: 'sparse',
    platter: ['convert', '-O', 'raw', src, '{out}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'raw', src, '{out}'] }],
    target: { 'qemu-img': 1.0 },
    output: true,
    needs: existsSync(src)
      ? ['qemu-img']
      : ['qemu-img', `bench-data/sparse.${fmt}(run-again-once-sparse.raw-exists)`],
  };
};

export const cases = [
  to('vhd', 'vpc', 'random'),
  to('vhd', 'vpc', 'sparse'),
  to('vhd', 'vpc', 'zero'),
  to('vdi', 'vdi', 'random'),
  to('vdi', 'vdi', 'sparse'),
  to('vdi', 'vdi', 'zero'),
  back('vhd', 'vpc'),
  back('vdi', 'vdi'),
];
