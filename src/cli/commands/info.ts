/**
 * platter info [--json] [--backing-chain] [-f FMT] [-U] IMAGE
 *
 * Text follows qemu-img info's layout (image:, file format:, virtual size:,
 * disk size:, ...) plus the files of the image and an mmls-like partition
 * table. JSON is one object (with --backing-chain: an array, top first).
 */
import type { Command } from 'commander';
import { formatSize } from '../../core/bytes.js';
import type { Disk } from '../../core/disk.js';
import { BackingNotFound } from '../../formats/open.js';
import { chainInfo, type ImageInfo, imageInfo } from '../../ops/info.js';
import { formatPartitionTable } from '../../ops/partitions.js';
import { closeAll, openArg, withForceShare, withImageOpts } from '../common.js';
import type { CliContext } from '../context.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface InfoOpts {
  imageOpts?: string[];
  json?: boolean;
  backingChain?: boolean;
  format?: string;
  forceShare?: boolean;
  quiet?: boolean;
}

const bytes = (n: number): string => `${formatSize(n)} (${n} bytes)`;

function detailLines(value: unknown, indent: string): string[] {
  if (value === null || typeof value !== 'object') return [`${indent}${String(value)}`];
  const lines: string[] = [];
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (v !== null && typeof v === 'object') {
      lines.push(`${indent}${k}:`);
      lines.push(...detailLines(v, `${indent}    `));
    } else {
      lines.push(`${indent}${k}: ${String(v)}`);
    }
  }
  return lines;
}

export function infoText(i: ImageInfo): string[] {
  const lines = [`image: ${i.filename}`, `file format: ${i.format}`];
  if (i.subformat) lines.push(`subformat: ${i.subformat}`);
  lines.push(`virtual size: ${bytes(i.virtualSize)}`);
  lines.push(`disk size: ${i.allocatedSize === undefined ? 'unavailable' : formatSize(i.allocatedSize)}`);
  if (i.granularity !== undefined && i.format !== 'raw') lines.push(`cluster size: ${i.granularity}`);
  if (i.backingFilename) {
    lines.push(`backing file: ${i.backingFilename}`);
    if (i.backingFormat) lines.push(`backing file format: ${i.backingFormat}`);
  }
  if (i.dirty !== undefined) lines.push(`dirty: ${i.dirty ? 'yes' : 'no'}`);
  if (i.corrupt !== undefined) lines.push(`corrupt: ${i.corrupt ? 'yes' : 'no'}`);
  if (i.files.length > 1 || (i.files.length === 1 && i.files[0] !== i.filename))
    lines.push(`files: ${i.files.join(', ')}`);
  if (i.snapshots?.length) {
    lines.push('Snapshot list:');
    lines.push(
      `${'ID'.padEnd(8)}${'TAG'.padEnd(20)}${'VM SIZE'.padStart(10)}  ${'DATE'.padEnd(20)}  VM CLOCK`,
    );
    for (const s of i.snapshots) {
      const date = new Date(s.date * 1000).toISOString().replace('T', ' ').slice(0, 19);
      const clock = (s.vmClock / 1e9).toFixed(3);
      lines.push(
        `${s.id.padEnd(8)}${s.name.padEnd(20)}${formatSize(s.vmStateSize).padStart(10)}  ${date.padEnd(20)}  ${clock}`,
      );
    }
  }
  if (i.details) {
    lines.push('Format specific information:');
    lines.push(...detailLines(i.details, '    '));
  }
  if (i.partitionTable) lines.push(...formatPartitionTable(i.partitionTable));
  return lines;
}

/**
 * Opens the image with its chain; without --backing-chain, an image whose
 * backing file is missing is shown alone (as qemu-img info does), with a
 * warning, so that the user sees which name is broken.
 */
async function openForInfo(
  ctx: CliContext,
  image: string,
  o: InfoOpts,
): Promise<{ disk: Disk; whole: boolean }> {
  const args = { format: o.format, forceShare: o.forceShare, imageOpts: o.imageOpts };
  try {
    // An image of 0 bytes (qcow2 and others can be made so) is shown too: info reads no data.
    return { disk: await openArg(ctx, image, args), whole: true };
  } catch (e) {
    if (o.backingChain || !(e instanceof BackingNotFound)) throw e;
    const disk = await openArg(ctx, image, { ...args, backing: false });
    if (!o.quiet) ctx.stderr.write(`platter: warning: ${e.message}; the partition table is not read\n`);
    return { disk, whole: false };
  }
}

async function info(ctx: CliContext, image: string, o: InfoOpts): Promise<number> {
  const { disk, whole } = await openForInfo(ctx, image, o);
  try {
    const infos = o.backingChain ? await chainInfo(disk) : [await imageInfo(disk, { partitions: whole })];
    if (o.quiet) return 0;
    if (o.json) printJson(ctx, o.backingChain ? infos : infos[0]);
    else
      printLines(
        ctx,
        infos.flatMap((i, n) => (n ? ['', ...infoText(i)] : infoText(i))),
      );
    return 0;
  } finally {
    await closeAll(disk);
  }
}

export const registerInfo: RegisterCommand = (program: Command, ctx, run) => {
  withImageOpts(
    withForceShare(
      program
        .command('info')
        .description('show the format, sizes, backing chain, snapshots and partition table of an image')
        .argument('<image>', 'image file, block device or nbd:// URI')
        .option('-f, --format <fmt>', 'image format (probed if absent)')
        .option('--backing-chain', 'show every image of the backing chain')
        .option('--json', 'print JSON')
        .option('-q, --quiet', 'print nothing but errors'),
    ),
  ).action(run((image: string, o: InfoOpts) => info(ctx, image, o)));
};
