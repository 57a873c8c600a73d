/**
 * platter snapshot -l | -c NAME | -a NAME | -d NAME [--json] [-f FMT] IMAGE
 *
 * Internal snapshots (qcow2), interoperable with `qemu-img snapshot`.
 */
import type { Command } from 'commander';
import type { SnapshotInfo } from '../../core/disk.js';
import { invalid } from '../../core/errors.js';
import { openImage } from '../../formats/open.js';
import { type SnapshotAction, snapshotDisk } from '../../ops/snapshot.js';
import { closeAll, withForceShare } from '../common.js';
import type { CliContext } from '../context.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface SnapshotOpts {
  list?: boolean;
  create?: string;
  apply?: string;
  delete?: string;
  format?: string;
  json?: boolean;
  quiet?: boolean;
  forceShare?: boolean;
}

const pad2 = (n: number): string => String(n).padStart(2, '0');

function table(snaps: SnapshotInfo[]): string[] {
  const lines = [
    'Snapshot list:',
    `${'ID'.padEnd(10)}${'TAG'.padEnd(18)}${'VM SIZE'.padStart(8)} ${'DATE'.padEnd(20)} VM CLOCK`,
  ];
  for (const s of snaps) {
    const d = new Date(s.date * 1000);
    const date = `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())}`;
    const ms = Math.floor(s.vmClock / 1e6);
    const clock = `${pad2(Math.floor(ms / 3600000))}:${pad2(Math.floor(ms / 60000) % 60)}:${pad2(Math.floor(ms / 1000) % 60)}.${String(ms % 1000).padStart(3, '0')}`;
    lines.push(
      `${s.id.padEnd(10)}${s.name.padEnd(18)}${`${s.vmStateSize} B`.padStart(8)} ${date.padEnd(20)} ${clock}`,
    );
  }
  return lines;
}

async function snapshot(ctx: CliContext, image: string, o: SnapshotOpts): Promise<number> {
  const chosen: SnapshotAction[] = [];
  if (o.list) chosen.push({ op: 'list' });
  if (o.create !== undefined) chosen.push({ op: 'create', name: o.create });
  if (o.apply !== undefined) chosen.push({ op: 'apply', name: o.apply });
  if (o.delete !== undefined) chosen.push({ op: 'delete', name: o.delete });
  if (chosen.length !== 1) throw invalid('give exactly one of -l, -c NAME, -a NAME, -d NAME');
  const action = chosen[0];
  const disk = await openImage(ctx.host, image, {
    format: o.format,
    readOnly: action.op === 'list',
    forceShare: o.forceShare,
    backing: false,
  });
  try {
    const snaps = await snapshotDisk(disk, action);
    if (action.op !== 'list' || o.quiet) return 0;
    if (o.json) printJson(ctx, snaps);
    else printLines(ctx, table(snaps));
    return 0;
  } finally {
    await closeAll(disk);
  }
}

export const registerSnapshot: RegisterCommand = (program: Command, ctx, run) => {
  withForceShare(
    program
      .command('snapshot')
      .description('list, create, apply or delete internal snapshots (qcow2)')
      .argument('<image>', 'image file')
      .option('-l, --list', 'list the snapshots')
      .option('-c, --create <name>', 'create a snapshot of the current state')
      .option('-a, --apply <name>', 'revert the image to a snapshot')
      .option('-d, --delete <name>', 'delete a snapshot')
      .option('-f, --format <fmt>', 'image format (probed if absent)')
      .option('--json', 'print the list as JSON')
      .option('-q, --quiet', 'print nothing but errors'),
  ).action(run((image: string, o: SnapshotOpts) => snapshot(ctx, image, o)));
};
