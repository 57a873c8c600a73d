// Bench cases for the core commands on raw images (see scripts/bench.mjs for the format).
const raw2raw = (file) => ({
  name: 'convert raw→raw',
  file,
  platter: ['convert', '-O', 'raw', '{in}', '{out}'],
  peers: [
    { name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'raw', '{in}', '{out}'] },
    { name: 'cp', argv: ['cp', '--sparse=always', '{in}', '{out}'] },
  ],
  target: { 'qemu-img': 1.0 },
  output: true,
});

export const cases = [
  raw2raw('random'),
  raw2raw('sparse'),
  raw2raw('zero'),
  {
    name: 'hash sha256',
    file: 'random',
    platter: ['hash', '-a', 'sha256', '{in}'],
    peers: [{ name: 'openssl', argv: ['openssl', 'dgst', '-sha256', '{in}'] }],
    target: { openssl: 0.9 },
  },
  {
    name: 'hash md5',
    file: 'random',
    platter: ['hash', '-a', 'md5', '{in}'],
    peers: [{ name: 'openssl', argv: ['openssl', 'dgst', '-md5', '{in}'] }],
  },
  {
    name: 'hash sha1',
    file: 'random',
    platter: ['hash', '-a', 'sha1', '{in}'],
    peers: [{ name: 'openssl', argv: ['openssl', 'dgst', '-sha1', '{in}'] }],
  },
  {
    name: 'hash md5+sha1+sha256 (one pass) vs md5 alone',
    file: 'random',
    platter: ['hash', '-a', 'md5,sha1,sha256', '{in}'],
    peers: [{ name: 'openssl', argv: ['openssl', 'dgst', '-md5', '{in}'] }],
    target: { openssl: 0.75 },
  },
  {
    name: 'compare identical',
    file: 'random',
    platter: ['compare', '{in}', '{in2}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'compare', '{in}', '{in2}'] }],
  },
  {
    name: 'compare identical',
    file: 'sparse',
    platter: ['compare', '{in}', '{in2}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'compare', '{in}', '{in2}'] }],
  },
  {
    name: 'convert raw→raw',
    file: 'huge',
    platter: ['convert', '-O', 'raw', '{in}', '{out}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'convert', '-O', 'raw', '{in}', '{out}'] }],
    output: true,
  },
  {
    name: 'compare identical',
    file: 'huge',
    platter: ['compare', '{in}', '{in2}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'compare', '{in}', '{in2}'] }],
  },
  {
    name: 'map',
    file: 'huge',
    platter: ['map', '--json', '{in}'],
    peers: [{ name: 'qemu-img', argv: ['qemu-img', 'map', '--output=json', '{in}'] }],
  },
];
