/**
 * platter verify [--json] [-p] [-q] [--log FILE] IMAGE
 *
 * EWF: recompute MD5/SHA-1 and compare with the hash/digest sections (every
 * chunk checksum is checked on the way). Raw or split: compare with the hashes
 * in the acquisition log beside the image (IMAGE.log, or --log). Exit 0 match,
 * 4 mismatch (naming the first bad chunk or segment), 1 error.
 */
import type { Command } from 'commander';
import { PlatterError } from '../../core/errors.js';
import { parseRecordText } from '../../ops/acquire/log.js';
import type { Digests } from '../../ops/hash.js';
import { verifyDisk } from '../../ops/verify.js';
import { closeAll, openInput, progressFor, withForceShare, withProgress } from '../common.js';
import type { CliContext } from '../context.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface VerifyOpts {
  forceShare?: boolean;
  format?: string;
  log?: string;
  json?: boolean;
  quiet?: boolean;
  progress?: unknown;
}

async function readText(ctx: CliContext, path: string): Promise<string> {
  const st = await ctx.host.open(path, { write: false, lock: 'none' });
  try {
    const n = await st.size();
    if (n > 64 << 20)
      throw new PlatterError('EINVAL', `${path}: ${n} bytes is too large for an acquisition log`);
    const b = new Uint8Array(n);
    await st.read(b, 0);
    return Buffer.from(b).toString('utf8');
  } finally {
    await st.close();
  }
}

async function verify(ctx: CliContext, image: string, o: VerifyOpts): Promise<number> {
  const disk = await openInput(ctx, image, { format: o.format, forceShare: o.forceShare });
  const progress = progressFor(ctx, o);
  try {
    const info = await disk.info();
    const stored = (info.details as { storedHashes?: Digests } | undefined)?.storedHashes;
    let expected: Digests;
    let size: number | undefined;
    let from: string;
    let rec: ReturnType<typeof parseRecordText> | undefined;
    if (stored && Object.keys(stored).length > 0 && !o.log) {
      expected = stored;
      from = `the hashes stored in the ${info.format} image`;
    } else {
      const logPath = o.log ?? `${image}.log`;
      if (!(await ctx.host.exists(logPath))) {
        throw new PlatterError(
          'ENOENT',
          `${image}: no stored hashes and no acquisition log at ${logPath} (give one with --log)`,
        );
      }
      rec = parseRecordText(await readText(ctx, logPath));
      if (Object.keys(rec.hashes).length === 0) {
        throw new PlatterError(
          'EINVAL',
          `${logPath}: no 'Hashes of the source' block found (not a platter acquisition log?)`,
        );
      }
      expected = rec.hashes;
      size = rec.size;
      from = `the acquisition log ${logPath}`;
      if (size !== undefined && size !== disk.size) {
        progress.finish();
        const detail = `the image holds ${disk.size} bytes, the log says ${size} were acquired`;
        if (o.json) printJson(ctx, { image, result: 'mismatch', expected, detail });
        ctx.stderr.write(`platter: error: verification failed: ${detail}\n`);
        return 4;
      }
    }
    const r = await verifyDisk(disk, expected, {
      size,
      windows: rec?.piecewise,
      signal: ctx.signal,
      onProgress: progress.onProgress,
    });
    // A split set acquired with its segment size as the hash window: name the segment.
    const files = [...new Set(disk.storages.flatMap((s) => s.files ?? [s.name]))];
    if (r.badWindow && rec?.segmentSize && rec.hashWindow === rec.segmentSize && files.length > 1) {
      const seg = files[Math.floor(r.badWindow.offset / rec.segmentSize)];
      if (seg) r.detail = `${r.detail} (segment ${seg})`;
    }
    progress.finish();
    if (o.json) printJson(ctx, { image, against: from, ...r });
    else if (!o.quiet) {
      const lines = Object.entries(r.computed).map(([a, h]) => `${a.toUpperCase()} (${image}) = ${h}`);
      lines.push(r.result === 'match' ? `Verified: matches ${from}` : `MISMATCH against ${from}`);
      printLines(ctx, lines);
    }
    if (r.result === 'mismatch') {
      ctx.stderr.write(`platter: error: verification failed: ${r.detail}\n`);
      return 4;
    }
    return 0;
  } finally {
    progress.finish();
    await closeAll(disk);
  }
}

export const registerVerify: RegisterCommand = (program: Command, ctx, run) => {
  withForceShare(
    withProgress(
      program
        .command('verify')
        .description('check an image against its stored hashes (EWF) or its acquisition log (raw, split)')
        .argument('<image>', 'E01, raw image or first file of a split set')
        .option('-f, --format <fmt>', 'image format (probed if absent)')
        .option('--log <file>', 'acquisition log to compare with (default IMAGE.log)')
        .option('--json', 'print the result as JSON'),
    ),
  ).action(run((image: string, o: VerifyOpts) => verify(ctx, image, o)));
};
