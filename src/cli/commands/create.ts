/**
 * platter create -f FMT [-o K=V,...] [-b BACKING [-F BFMT]] [--force] IMAGE [SIZE]
 *
 * Prints `Formatting 'IMAGE', fmt=FMT size=N` like qemu-img (or JSON); SIZE
 * may be left out with -b (the backing file's size is taken).
 */
import type { Command } from 'commander';
import { parseSize } from '../../core/bytes.js';
import { byName } from '../../formats/index.js';
import { createImage, openImage } from '../../formats/open.js';
import { collect, parseKeyValues } from '../args.js';
import type { CliContext } from '../context.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface CreateOpts {
  format: string;
  options?: string[];
  backing?: string;
  backingFormat?: string;
  force?: boolean;
  json?: boolean;
  quiet?: boolean;
}

async function create(
  ctx: CliContext,
  image: string,
  sizeText: string | undefined,
  o: CreateOpts,
): Promise<number> {
  byName(o.format); // unknown -f: refuse before touching anything
  const size = sizeText === undefined ? undefined : parseSize(sizeText, 'size');
  const options = parseKeyValues(o.options);
  await createImage(ctx.host, image, {
    format: o.format,
    size,
    options,
    backing: o.backing ? { name: o.backing, format: o.backingFormat } : undefined,
    force: o.force,
  });
  if (o.quiet) return 0;
  // The size actually made (a backing file may have given it).
  let made = size;
  if (made === undefined) {
    const d = await openImage(ctx.host, image, { readOnly: true, format: o.format, backing: false });
    made = d.size;
    await d.close();
  }
  if (o.json) {
    printJson(ctx, {
      filename: image,
      format: o.format,
      virtualSize: made,
      options,
      ...(o.backing ? { backingFilename: o.backing, backingFormat: o.backingFormat } : {}),
    });
  } else {
    const extra = Object.entries(options).map(([k, v]) => ` ${k}=${v}`);
    const bk = o.backing
      ? ` backing_file=${o.backing}${o.backingFormat ? ` backing_fmt=${o.backingFormat}` : ''}`
      : '';
    printLines(ctx, [`Formatting '${image}', fmt=${o.format} size=${made}${bk}${extra.join('')}`]);
  }
  return 0;
}

export const registerCreate: RegisterCommand = (program: Command, ctx, run) => {
  program
    .command('create')
    .description('create a new image')
    .argument('<image>', 'the image file to create')
    .argument('[size]', 'virtual size: bytes or K, M, G, T, P (powers of 1024)')
    .requiredOption('-f, --format <fmt>', 'image format (raw, qcow2, vmdk, vhd, vhdx, vdi)')
    .option('-o, --options <k=v,...>', 'format options, e.g. preallocation=full,cluster_size=64K', collect)
    .option('-b, --backing <file>', 'backing file (copy-on-write)')
    .option('-F, --backing-format <fmt>', 'format of the backing file')
    .option('--force', 'overwrite an existing file')
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print nothing but errors')
    .action(run((image: string, size: string | undefined, o: CreateOpts) => create(ctx, image, size, o)));
};
