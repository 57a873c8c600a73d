/**
 * platter map [--json] [-f FMT] [-U] IMAGE
 *
 * JSON: the array of `qemu-img map --output=json` (start, length, depth,
 * present, zero, data, and offset where the bytes lie verbatim in the layer's
 * file), one entry per line like qemu-img prints it. Text: a
 * table of every range with its kind and the file of the layer it comes from.
 */
import type { Command } from 'commander';
import { mapDisk } from '../../ops/map.js';
import { closeAll, openInput, withForceShare, withImageOpts } from '../common.js';
import type { CliContext } from '../context.js';
import { printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface MapOpts {
  imageOpts?: string[];
  format?: string;
  json?: boolean;
  quiet?: boolean;
  forceShare?: boolean;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

async function map(ctx: CliContext, image: string, o: MapOpts): Promise<number> {
  const disk = await openInput(ctx, image, {
    format: o.format,
    forceShare: o.forceShare,
    imageOpts: o.imageOpts,
  });
  try {
    const entries = await mapDisk(disk, { signal: ctx.signal });
    if (o.quiet) return 0;
    if (o.json) {
      const rows = entries.map((e) => JSON.stringify(e));
      ctx.stdout.write(`[${rows.join(',\n')}]\n`);
      return 0;
    }
    const lines = [`${'Offset'.padEnd(20)}${'Length'.padEnd(20)}${'Kind'.padEnd(8)}${'Depth'.padEnd(7)}File`];
    for (const e of entries) {
      const kind = e.data ? 'data' : e.present ? 'zero' : 'hole';
      const file = e.present ? (disk.layers[e.depth]?.name ?? '-') : '-';
      lines.push(
        `${hex(e.start).padEnd(20)}${hex(e.length).padEnd(20)}${kind.padEnd(8)}${String(e.depth).padEnd(7)}${file}`,
      );
    }
    printLines(ctx, lines);
    return 0;
  } finally {
    await closeAll(disk);
  }
}

export const registerMap: RegisterCommand = (program: Command, ctx, run) => {
  withImageOpts(
    withForceShare(
      program
        .command('map')
        .description('show the allocation map: which ranges hold data, zeros or nothing, and in which layer')
        .argument('<image>', 'image file, block device or nbd:// URI')
        .option('-f, --format <fmt>', 'image format (probed if absent)')
        .option('--json', 'print JSON like qemu-img map --output=json')
        .option('-q, --quiet', 'print nothing but errors'),
    ),
  ).action(run((image: string, o: MapOpts) => map(ctx, image, o)));
};
