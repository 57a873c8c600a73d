// VHDX cases for `npm run bench` (format: see the top of scripts/bench.mjs).
// Targets from issue 6: convert raw→vhdx and vhdx→raw at least 1.0× qemu-img.
//
// vhdx→raw needs a VHDX input: it is made once, with qemu-img, from the bench's
// sparse.raw as {data}/sparse.vhdx (so it exists from the second run on, or as
// soon as another case has made sparse.raw).
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
const data = process.env.BENCH_DATA ?? join(root, 'bench-data');
const sparseRaw = join(data, 'sparse.raw');
const sparseVhdx = join(data, 'sparse.vhdx');

function vhdxInput() {
  if (existsSync(sparseVhdx)) return true;
  if (!existsSync(sparseRaw) || statSync(sparseRaw).size !== 2 ** 31) return false;
  const r = spawnSync('qemu-img', ['convert', '-O', 'vhdx', sparseRaw, sparseVhdx], { stdio: 'ignore' });
  return r.status === 0;
}

const haveInput = spawnSync('sh', ['-c', 'command -v qemu-img']).status === 0 && vhdxInput();

const toVhdx = (file) => ({
  name: 'convert raw→vhdx (dynamic)',
  file,
  platter: ['convert', '-O', 'vhdx', '{in}', '{out}'],
  peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'vhdx', '{in}', '{out}'] }],
  target: { 'qemu-img': 1.0 },
  output: true,
  needs: ['qemu-img'],
});

export const cases = [
  toVhdx('random'),
  toVhdx('sparse'),
  toVhdx('zero'),
  {
    name: 'convert vhdx→raw',
    file: 'sparse',
    platter: ['convert', '-O', 'raw', sparseVhdx, '{out}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'raw', sparseVhdx, '{out}'] }],
    target: { 'qemu-img': 1.0 },
    output: true,
    needs: haveInput
      ? ['qemu-img']
      : ['qemu-img', 'bench-data/sparse.vhdx(run-again-once-sparse.raw-exists)'],
  },
];
