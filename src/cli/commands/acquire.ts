/**
 * platter acquire [-O raw|split|ewf|FMT] [-a HASHES] [--compression none|fast|best]
 *   [--case-number ..] [--evidence-number ..] [--examiner ..] [--description ..]
 *   [--notes ..] [--segment-size SIZE] [--hash-window SIZE] [--log FILE]
 *   [-r RETRIES] [--no-verify] [-o K=V] [--json] [-p] [-q] SOURCE DEST
 *
 * A forensic image: the source (file, block device, nbd:// URI) is opened
 * read-only with direct I/O and read once; hashes are computed on the way;
 * unreadable sectors are retried, zero-filled and recorded; the destination
 * is re-read and compared. An acquisition log (text) goes to --log or
 * DEST.log; --json prints the same record. Nothing is ever overwritten, not
 * even with --force. Exit: 0 verified (also with unreadable sectors), 1 error,
 * 4 verification mismatch.
 */
import { readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Command } from 'commander';
import { parseSize } from '../../core/bytes.js';
import { type Disk, toDisk } from '../../core/disk.js';
import { invalid, PlatterError } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import { segmentNumber } from '../../formats/ewf/names.js';
import { byName } from '../../formats/index.js';
import { createImage, openImage } from '../../formats/open.js';
import { buildRecord, recordText, type SourceIdentity } from '../../ops/acquire/log.js';
import { acquire } from '../../ops/acquire.js';
import { type HashAlgorithm, parseAlgorithms } from '../../ops/hash.js';
import { createSplit, splitName } from '../../storage/split.js';
import { collect, parseKeyValues } from '../args.js';
import { closeAll, progressFor, sameFile, withForceShare, withProgress } from '../common.js';
import type { CliContext } from '../context.js';
import { VERSION } from '../main.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface AcquireCliOpts {
  forceShare?: boolean;
  outputFormat: string;
  algorithms: string;
  compression?: string;
  caseNumber?: string;
  evidenceNumber?: string;
  examiner?: string;
  description?: string;
  notes?: string;
  segmentSize?: string;
  hashWindow?: string;
  log?: string;
  retries: string;
  verify: boolean;
  options?: string[];
  json?: boolean;
  quiet?: boolean;
  progress?: unknown;
}

const readTrim = (p: string): string | undefined => {
  try {
    const v = readFileSync(p, 'utf8').trim();
    return v === '' ? undefined : v;
  } catch {
    return undefined;
  }
};

/** Model, serial, vendor, read-only flag and mount state of a block device, from sysfs and /proc. */
function deviceIdentity(path: string): Partial<SourceIdentity> {
  try {
    const st = statSync(path);
    if (!st.isBlockDevice()) return {};
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
    const sys = `/sys/dev/block/${major}:${minor}`;
    const model = readTrim(`${sys}/device/model`);
    const vendor = readTrim(`${sys}/device/vendor`);
    const serial =
      readTrim(`${sys}/device/serial`) ?? readTrim(`${sys}/serial`) ?? readTrim(`${sys}/device/wwid`);
    const ro = readTrim(`${sys}/ro`);
    const real = realpathSync(path);
    const mounts = readTrim('/proc/mounts') ?? '';
    const mounted = mounts.split('\n').some((l) => {
      const dev = l.split(' ')[0];
      return (
        dev === path || dev === real || (dev.startsWith(real) && /^\d+$|^p\d+$/.test(dev.slice(real.length)))
      );
    });
    return {
      ...(model ? { model } : {}),
      ...(vendor ? { vendor } : {}),
      ...(serial ? { serial } : {}),
      writable: ro === '0',
      mounted,
    };
  } catch {
    return {};
  }
}

/** A Storage as a Disk (raw and split destinations). */
function storageDisk(st: Storage, size: number, readOnly: boolean): Disk {
  return toDisk(
    {
      size,
      storages: [st],
      read: (b, o) => st.read(b, o),
      write: readOnly ? undefined : (b, o) => st.write(b, o),
      flush: () => st.flush(),
      close: () => st.close(),
      info: async () => ({ format: 'raw' }),
    },
    { name: st.name, readOnly },
  );
}

const isUri = (p: string): boolean => /^[a-z][a-z0-9+.-]*:\/\//i.test(p);

async function acquireCmd(
  ctx: CliContext,
  source: string,
  destArg: string,
  o: AcquireCliOpts,
): Promise<number> {
  const started = new Date();
  const fmt = o.outputFormat;
  let algs = parseAlgorithms(o.algorithms);
  const retries = Number(o.retries);
  if (!Number.isInteger(retries) || retries < 0 || retries > 100)
    throw invalid(`--retries ${o.retries}: use 0 to 100`);
  const segmentSize = o.segmentSize ? parseSize(o.segmentSize, 'segment size') : undefined;
  // A split set gets one piecewise hash per segment unless told otherwise: verify then names the bad segment.
  const hashWindow = o.hashWindow
    ? parseSize(o.hashWindow, 'hash window')
    : fmt === 'split' && segmentSize
      ? segmentSize
      : 0;
  if (o.hashWindow && hashWindow < 512) throw invalid('--hash-window must be at least 512 bytes');
  if (o.compression && !['none', 'fast', 'best'].includes(o.compression)) {
    throw invalid(`--compression ${o.compression}: use none, fast or best`);
  }
  if (o.compression && fmt !== 'ewf') throw invalid('--compression applies to -O ewf only');
  if (fmt === 'split' && !segmentSize) throw invalid('-O split needs --segment-size');
  if (fmt !== 'raw' && fmt !== 'split') byName(fmt);

  let dest = destArg;
  if (fmt === 'ewf' && !/\.[eE]01$/.test(dest)) dest = `${dest}.E01`;
  const logPath = o.log ?? `${dest}.log`;
  if (!isUri(dest) && !isUri(source) && sameFile(source, dest))
    throw invalid(`${dest}: the destination is the source`);
  // Evidence is never overwritten: no --force here. A set's later segments
  // (DEST.E02 ..., DEST.002 ...) are refused now too, not when the copy reaches them.
  for (const p of [dest, logPath, ...laterSegments(fmt, dest)]) {
    if (await ctx.host.exists(p)) throw neverOverwrites(p);
  }
  const notes: string[] = [];
  if (fmt === 'ewf') {
    if (!algs.includes('md5')) {
      algs = ['md5', ...algs];
      notes.push('MD5 was added to the hashes: the E01 hash section stores it.');
    }
    const missing = algs.filter((a) => a !== 'md5' && a !== 'sha1');
    if (missing.length) {
      notes.push(
        `The EnCase-6 E01 layout has no place for ${missing.join(', ').toUpperCase()}: it is kept in this log only; the E01 stores MD5${algs.includes('sha1') ? ' and SHA-1' : ''}.`,
      );
    }
  }

  // Block devices are read with O_DIRECT from the start; files and exports
  // buffered, switching to O_DIRECT for the salvage reads after an error.
  const lock = o.forceShare ? 'none' : 'auto';
  let src = await ctx.host.open(source, { write: false, lock });
  if ((src as { isBlockDevice?: boolean }).isBlockDevice) {
    await src.close();
    src = await ctx.host.open(source, { write: false, direct: true, lock });
  }
  const srcInfo = src as Storage & { isBlockDevice?: boolean; sectorSize?: number; direct?: boolean };
  let dst: Disk | undefined;
  const created: string[] = [];
  const progress = progressFor(ctx, o);
  try {
    const size = await src.size();
    const sectorSize = srcInfo.sectorSize ?? 512;
    const identity: SourceIdentity = {
      path: source,
      size,
      sectorSize,
      blockDevice: !!srcInfo.isBlockDevice,
      directIo: !!srcInfo.direct,
      ...(srcInfo.isBlockDevice && !isUri(source) ? deviceIdentity(source) : {}),
    };
    const warn = (m: string): void => {
      if (!o.quiet) ctx.stderr.write(`platter: warning: ${m}\n`);
    };
    if (identity.mounted) warn(`${source} is mounted: its content may change while it is read`);
    if (identity.writable) warn(`${source} is writable (no write blocker; consider blockdev --setro)`);
    if (size % sectorSize !== 0) {
      notes.push(
        `The source size ${size} is not a multiple of the ${sectorSize}-byte sector: every byte was kept` +
          (fmt === 'ewf'
            ? '; the E01 counts whole sectors, so it pads the last one with zeros and its stored hashes cover the padded media.'
            : '.'),
      );
    }
    const meta: Record<string, string> = {};
    for (const [k, v] of [
      ['caseNumber', o.caseNumber],
      ['evidenceNumber', o.evidenceNumber],
      ['examiner', o.examiner],
      ['description', o.description],
      ['notes', o.notes],
    ] as const) {
      if (v !== undefined) meta[k] = v;
    }

    let reopen: () => Promise<Disk>;
    // Raw and split files can be synced while further writes go on (image formats keep their flush to the end).
    let writeback: (() => Promise<void>) | undefined;
    if (fmt === 'raw' || fmt === 'split') {
      const st =
        fmt === 'raw' ? await ctx.host.create(dest, {}) : await createSplit(ctx.host, dest, segmentSize!, {});
      created.push(dest);
      dst = storageDisk(st, size, false);
      writeback = () => st.flush();
      reopen = async () => storageDisk(await ctx.host.open(dest, { write: false }), size, true);
    } else {
      const options = parseKeyValues(o.options);
      if (fmt === 'ewf') {
        Object.assign(options, {
          compression: o.compression ?? 'fast',
          ...(segmentSize ? { segment_size: String(segmentSize) } : {}),
          ...(o.caseNumber !== undefined ? { case_number: o.caseNumber } : {}),
          ...(o.evidenceNumber !== undefined ? { evidence_number: o.evidenceNumber } : {}),
          ...(o.examiner !== undefined ? { examiner: o.examiner } : {}),
          ...(o.description !== undefined ? { description: o.description } : {}),
          ...(o.notes !== undefined ? { notes: o.notes } : {}),
          ...(identity.model ? { model: identity.model } : {}),
          ...(identity.serial ? { serial_number: identity.serial } : {}),
        });
      } else if (segmentSize) {
        throw invalid(`--segment-size applies to -O split and -O ewf; use -o for ${fmt} options`);
      }
      await createImage(ctx.host, dest, { format: fmt, size, options });
      created.push(dest);
      dst = await openImage(ctx.host, dest, { format: fmt, readOnly: false });
      reopen = () => openImage(ctx.host, dest, { format: fmt, readOnly: true });
    }

    const r = await acquire(src, dst, {
      algorithms: algs as HashAlgorithm[],
      hashWindow,
      retries,
      sectorSize,
      verify: o.verify,
      reopen,
      writeback,
      reopenSourcePrecise: isUri(source)
        ? undefined
        : () => ctx.host.open(source, { write: false, direct: true, lock }),
      signal: ctx.signal,
      onProgress: progress.onProgress,
    });
    dst = undefined;
    progress.finish();

    let files = [dest];
    try {
      const d = await reopen();
      const det = (await d.info()).details as { segmentFiles?: string[] } | undefined;
      files = det?.segmentFiles ?? [...new Set(d.storages.flatMap((s) => s.files ?? [s.name]))];
      await d.close();
    } catch {
      // the verification result already says why the destination cannot be opened
    }
    if (fmt === 'ewf' && r.hashesStored === false)
      notes.push('The E01 stores hashes computed over its own (padded) content.');
    const ended = new Date();
    const record = buildRecord(r, {
      tool: { name: 'platter', version: VERSION },
      startTime: started.toISOString(),
      endTime: ended.toISOString(),
      seconds: (ended.getTime() - started.getTime()) / 1000,
      source: identity,
      destination: {
        format: fmt,
        path: dest,
        files,
        ...(fmt === 'ewf' ? { compression: o.compression ?? 'fast' } : {}),
        ...(segmentSize ? { segmentSize } : {}),
      },
      caseMetadata: meta,
      ...(hashWindow ? { hashWindow } : {}),
      notes,
    });
    const logSt = await ctx.host.create(logPath, {});
    try {
      await logSt.write(Buffer.from(recordText(record)), 0);
      await logSt.flush();
    } finally {
      await logSt.close();
    }
    if (r.unreadable.length) {
      const bytes = record.unreadableBytes;
      warn(
        `${r.unreadable.length} unreadable range(s), ${bytes} bytes (${bytes / sectorSize} sectors), were filled with zeros; see ${logPath}`,
      );
    }
    if (o.json) printJson(ctx, record);
    else if (!o.quiet) {
      printLines(ctx, [
        ...algs.map((a) => `${a.toUpperCase()} (${source}) = ${r.hashes[a]}`),
        `Verification: ${r.verification.result}${r.verification.detail ? ` (${r.verification.detail})` : ''}`,
        `Log: ${logPath}`,
      ]);
    }
    if (r.verification.result === 'mismatch') {
      ctx.stderr.write(`platter: error: verification failed: ${r.verification.detail}\n`);
      return 4;
    }
    return 0;
  } catch (e) {
    progress.finish();
    await closeAll(dst);
    if (e instanceof PlatterError && created.length) {
      // A destination that was made is left as it is (evidence is never deleted), and said to be incomplete.
      if (e.code === 'ECANCELED')
        throw new PlatterError('ECANCELED', `interrupted: ${dest} is incomplete (no log was written)`);
      throw new PlatterError(e.code, `${e.message}; ${dest} is incomplete (no log was written)`);
    }
    throw e;
  } finally {
    await src.close().catch(() => undefined);
  }
}

export const registerAcquire: RegisterCommand = (program: Command, ctx, run) => {
  withForceShare(
    withProgress(
      program
        .command('acquire')
        .description('forensic image of a drive, file or NBD export: hashes while reading, verified, logged')
        .argument('<source>', 'block device, file or nbd:// URI (opened read-only)')
        .argument('<dest>', 'destination (raw file, DEST.001 for split, DEST[.E01] for ewf)')
        .option('-O, --output-format <fmt>', 'raw, split, ewf or any writable image format', 'raw')
        .option('-a, --algorithms <list>', 'hashes: md5, sha1, sha256, sha512', 'md5,sha256')
        .option('--compression <level>', 'ewf: none, fast or best (default fast)')
        .option('--case-number <text>', 'case number (ewf header, log)')
        .option('--evidence-number <text>', 'evidence number')
        .option('--examiner <name>', 'examiner name')
        .option('--description <text>', 'description')
        .option('--notes <text>', 'notes')
        .option('--segment-size <size>', 'split and ewf: bytes per segment file')
        .option('--hash-window <size>', 'also hash every SIZE bytes (piecewise hashes in the log)')
        .option('--log <file>', 'acquisition log (default DEST.log)')
        .option('-r, --retries <n>', 'further attempts at an unreadable sector', '2')
        .option('--no-verify', 'do not re-read and compare the destination')
        .option('-o, --options <k=v,...>', 'destination format options (-O FMT)', collect)
        .option('--json', 'print the acquisition record as JSON'),
    ),
  ).action(run((source: string, dest: string, o: AcquireCliOpts) => acquireCmd(ctx, source, dest, o)));
};

/** The files in DEST's directory that are later segments of the set DEST starts (E01 or split). */
function laterSegments(fmt: string, dest: string): string[] {
  if (isUri(dest) || (fmt !== 'ewf' && fmt !== 'split')) return [];
  const first = splitName(dest);
  const isLater = (name: string): boolean => {
    if (fmt === 'ewf') return (segmentNumber(dest, name) ?? 0) > 1;
    const s = splitName(join(dirname(dest), name));
    return !!first && !!s && s.prefix === first.prefix && s.index > first.index;
  };
  return readdirSync(dirname(dest))
    .filter(isLater)
    .map((n) => join(dirname(dest), n));
}

const neverOverwrites = (path: string): PlatterError =>
  new PlatterError('EEXIST', `${path}: already exists; acquire never overwrites (choose another name)`);
