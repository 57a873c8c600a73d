// VMDK cases for `npm run bench` (format: see the top of scripts/bench.mjs).
// Targets from issue 4: raw→vmdk (monolithicSparse) and vmdk→raw at least
// 1.0× qemu-img; raw→streamOptimized at least 1.0× qemu-img using both cores.
//
// vmdk→raw needs a VMDK input: it is made once, with qemu-img, from the bench's
// sparse.raw as {data}/sparse.vmdk (so it exists from the second run on, or
// as soon as another case has made sparse.raw).
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
const data = process.env.BENCH_DATA ?? join(root, 'bench-data');
const sparseRaw = join(data, 'sparse.raw');
const sparseVmdk = join(data, 'sparse.vmdk');

function vmdkInput() {
  if (existsSync(sparseVmdk)) return true;
  if (!existsSync(sparseRaw) || statSync(sparseRaw).size !== 2 ** 31) return false;
  const r = spawnSync('qemu-img', ['convert', '-O', 'vmdk', sparseRaw, sparseVmdk], { stdio: 'ignore' });
  return r.status === 0;
}

const haveInput = spawnSync('sh', ['-c', 'command -v qemu-img']).status === 0 && vmdkInput();

export const cases = [
  {
    name: 'convert raw→vmdk (monolithicSparse)',
    file: 'random',
    platter: ['convert', '-O', 'vmdk', '{in}', '{out}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'vmdk', '{in}', '{out}'] }],
    target: { 'qemu-img': 1.0 },
    output: true,
  },
  {
    name: 'convert raw→vmdk (monolithicSparse)',
    file: 'sparse',
    platter: ['convert', '-O', 'vmdk', '{in}', '{out}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'vmdk', '{in}', '{out}'] }],
    target: { 'qemu-img': 1.0 },
    output: true,
  },
  {
    name: 'convert vmdk→raw',
    file: 'sparse',
    platter: ['convert', '-O', 'raw', sparseVmdk, '{out}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'raw', sparseVmdk, '{out}'] }],
    target: { 'qemu-img': 1.0 },
    output: true,
    needs: haveInput
      ? ['qemu-img']
      : ['qemu-img', 'bench-data/sparse.vmdk(run-again-once-sparse.raw-exists)'],
  },
  {
    name: 'convert raw→vmdk (streamOptimized, -c)',
    file: 'sparse',
    platter: ['convert', '-c', '-O', 'vmdk', '-o', 'subformat=streamOptimized', '{in}', '{out}'],
    peers: [
      {
        name: 'qemu-img',
        argv: ['qemu-img', 'convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', '{in}', '{out}'],
      },
    ],
    target: { 'qemu-img': 1.0 },
    output: true,
  },
];
