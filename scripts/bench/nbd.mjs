// Bench cases for `platter serve` (see scripts/bench.mjs for the format).
//
// The client is nbdcopy reading the whole 2 GiB random raw export into null:
// (nbdcopy's defaults: block status first, multi-conn when offered, 64
// requests in flight, each as large as the server's preferred block size but
// at least 256 KiB: platter's read-only export prefers 2 MiB, qemu-nbd 4 KiB,
// nbdkit's file plugin says nothing). Each server runs captive, so the measured time is one
// whole session: `platter serve --run`, `nbdkit --run`, and nbdcopy's own
// `[ qemu-nbd ... ]` (systemd socket activation).
//
// "4 clients at once" runs four nbdcopy processes, each reading the whole
// export (8 GiB in all), against the same run with one client (2 GiB). The
// ratio printed is time(1 client) / time(4 clients); aggregate throughput is
// 4 × that ratio, so "aggregate no lower than one client" is a ratio ≥ 0.25.
const copy = 'nbdcopy "$uri" null:';
const four = `for i in 1 2 3 4; do ${copy} & done; wait`;

export const cases = [
  {
    name: 'nbdcopy via serve (read)',
    file: 'random',
    platter: ['serve', '-r', '-f', 'raw', '{in}', '--run', copy],
    peers: [
      { name: 'qemu-nbd', argv: ['nbdcopy', '--', '[', 'qemu-nbd', '-r', '-f', 'raw', '{in}', ']', 'null:'] },
      { name: 'nbdkit file', argv: ['nbdkit', '-r', '-U', '-', 'file', '{in}', '--run', copy] },
    ],
    target: { 'qemu-nbd': 1.0, 'nbdkit file': 0.8 },
    needs: ['nbdcopy', 'qemu-nbd', 'nbdkit'],
  },
  {
    name: 'nbdcopy via serve, 4 clients at once',
    file: 'random',
    platter: ['serve', '-r', '-f', 'raw', '{in}', '--run', four],
    peers: [
      {
        name: 'platter, 1 client',
        argv: [
          process.execPath,
          new URL('../../bin/platter', import.meta.url).pathname,
          'serve',
          '-r',
          '-f',
          'raw',
          '{in}',
          '--run',
          copy,
        ],
      },
    ],
    target: { 'platter, 1 client': 0.25 },
    needs: ['nbdcopy'],
  },
];
