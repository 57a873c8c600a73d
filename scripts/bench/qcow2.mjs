// qcow2 cases for `npm run bench` (format: see the top of scripts/bench.mjs).
// Targets from issue 3: convert raw→qcow2 and qcow2→raw at least 1.0× qemu-img
// on the three files; convert -c (zlib) at least 1.0× qemu-img -c; reading a
// 3-deep backing chain at least 0.8× qemu-img convert.
//
// The qcow2 inputs are made once with qemu-img from the bench's sparse.raw, in
// {data}: sparse.qcow2, and a chain chain-base.qcow2 ← chain-mid.qcow2 ←
// chain-top.qcow2 with writes of its own in each overlay.
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
const data = process.env.BENCH_DATA ?? join(root, 'bench-data');
const sparseRaw = join(data, 'sparse.raw');
const sparseQcow2 = join(data, 'sparse.qcow2');
const chainTop = join(data, 'chain-top.qcow2');

const sh = (cmd, args) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;

function makeInputs() {
  if (existsSync(sparseQcow2) && existsSync(chainTop)) return true;
  if (!existsSync(sparseRaw) || statSync(sparseRaw).size !== 2 ** 31) return false;
  if (!existsSync(sparseQcow2) && !sh('qemu-img', ['convert', '-O', 'qcow2', sparseRaw, sparseQcow2]))
    return false;
  const base = join(data, 'chain-base.qcow2');
  const mid = join(data, 'chain-mid.qcow2');
  return (
    sh('qemu-img', ['convert', '-O', 'qcow2', sparseRaw, base]) &&
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'chain-base.qcow2', '-F', 'qcow2', mid]) &&
    sh('qemu-io', ['-c', 'write -P 0x11 0 256M', '-c', 'write -P 0x12 1G 128M', mid]) &&
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'chain-mid.qcow2', '-F', 'qcow2', chainTop]) &&
    sh('qemu-io', ['-c', 'write -P 0x21 128M 256M', '-c', 'write -z 1536M 64M', chainTop])
  );
}

const haveQemu = spawnSync('sh', ['-c', 'command -v qemu-img']).status === 0;
const haveInputs = haveQemu && makeInputs();
const inputs = haveInputs
  ? ['qemu-img']
  : ['qemu-img', 'bench-data/sparse.qcow2(run-again-once-sparse.raw-exists)'];

const toQcow2 = (file) => ({
  name: 'convert raw→qcow2',
  file,
  platter: ['convert', '-O', 'qcow2', '{in}', '{out}'],
  peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'qcow2', '{in}', '{out}'] }],
  target: { 'qemu-img': 1.0 },
  output: true,
  needs: ['qemu-img'],
});

export const cases = [
  toQcow2('random'),
  toQcow2('sparse'),
  toQcow2('zero'),
  {
    name: 'convert -c raw→qcow2 (zlib)',
    file: 'sparse',
    platter: ['convert', '-c', '-O', 'qcow2', '{in}', '{out}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-c', '-O', 'qcow2', '{in}', '{out}'] }],
    target: { 'qemu-img': 1.0 },
    output: true,
    needs: ['qemu-img'],
  },
  {
    name: 'convert qcow2→raw',
    file: 'sparse',
    platter: ['convert', '-O', 'raw', sparseQcow2, '{out}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'raw', sparseQcow2, '{out}'] }],
    target: { 'qemu-img': 1.0 },
    output: true,
    needs: inputs,
  },
  {
    name: 'convert 3-deep qcow2 chain→raw',
    file: 'sparse',
    platter: ['convert', '-O', 'raw', chainTop, '{out}'],
    inputs: [join(data, 'chain-base.qcow2'), join(data, 'chain-mid.qcow2')],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'raw', chainTop, '{out}'] }],
    target: { 'qemu-img': 0.8 },
    output: true,
    needs: inputs,
  },
];
