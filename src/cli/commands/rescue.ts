/**
 * platter rescue [options] SOURCE DEST MAPFILE — ddrescue-style recovery.
 * platter mapview MAPFILE --png FILE — draw a mapfile.
 * Options follow GNU ddrescue's spelling; the mapfile is ddrescue's format.
 */
import { statSync, writeFileSync } from 'node:fs';
import { crc32, deflateSync } from 'node:zlib';
import type { Command } from 'commander';
import { formatSize, parseSize } from '../../core/bytes.js';
import type { Disk } from '../../core/disk.js';
import { invalid, PlatterError } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import { createImage, openImage } from '../../formats/open.js';
import { type RescueStatus, rescue } from '../../ops/rescue/engine.js';
import { RescueMap } from '../../ops/rescue/mapfile.js';
import { mapPicture } from '../../ops/rescue/mappng.js';
import { readMapfile, writeMapfile } from '../../ops/rescue/persist.js';
import type { SyncFileIo } from '../../storage/sync-file.js';
import { sameFile } from '../common.js';
import type { CliContext } from '../context.js';
import { printJson } from '../output.js';
import { VERSION } from '../version.js';
import type { RegisterCommand } from './index.js';
import { openRescueIo } from './rescue-io.js';

/** ddrescue numbers: decimal, 0x hex, with K/M/G… (1024) or `s` (sectors) suffixes. */
function num(text: string, what: string, sector = 512): number {
  const t = text.trim();
  if (/^0x[0-9a-f]+$/i.test(t)) return Number.parseInt(t.slice(2), 16);
  const s = /^(\d+)s$/i.exec(t);
  if (s) return Number(s[1]) * sector;
  return parseSize(t, what);
}

interface RescueFlags {
  outputFormat?: string;
  retryPasses?: string;
  reverse?: boolean;
  /** commander: --no-scrape sets scrape=false */
  scrape?: boolean;
  trim?: boolean;
  sectorSize?: string;
  clusterSize?: string;
  inputPosition?: string;
  outputPosition?: string;
  size?: string;
  domainMapfile?: string;
  skipSize?: string;
  minReadRate?: string;
  timeout?: string;
  direct?: boolean;
  sparse?: boolean;
  force?: boolean;
  synchronous?: boolean;
  json?: boolean;
  quiet?: boolean;
  progress?: unknown;
  mapPng?: string;
  mapfileInterval?: string;
  forceShare?: boolean;
}

const isBlockDevice = (p: string): boolean => {
  try {
    return statSync(p).isBlockDevice();
  } catch {
    return false;
  }
};

function parseInterval(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([smhd]?)$/.exec(text.trim());
  if (!m) throw invalid(`invalid time interval '${text}' (e.g. 30, 30s, 5m, 1h)`);
  return Number(m[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as '' | 's']! * 1000;
}

function renderStatus(s: RescueStatus): string[] {
  const pct = s.domainSize > 0 ? ((100 * s.rescued) / s.domainSize).toFixed(2) : '100.00';
  const rate = s.elapsedMs > 0 ? (s.readBytes * 1000) / s.elapsedMs : 0;
  return [
    `     ipos: ${formatSize(s.pos).padStart(10)},  non-trimmed: ${formatSize(s.nonTrimmed).padStart(10)},  average rate: ${formatSize(Math.round(rate)).padStart(10)}/s`,
    `  rescued: ${formatSize(s.rescued).padStart(10)},  non-scraped: ${formatSize(s.nonScraped).padStart(10)},  bad areas: ${String(s.badAreas).padStart(6)} (${formatSize(s.badSize)})`,
    `non-tried: ${formatSize(s.nonTried).padStart(10)},  read errors: ${String(s.readErrors).padStart(10)},  run time: ${Math.round(s.elapsedMs / 1000)} s`,
    `pct rescued: ${pct}%,  time since last successful read: ${s.sinceLastGoodMs < 1000 ? 'n/a' : `${Math.round(s.sinceLastGoodMs / 1000)} s`},  ${s.phase} pass ${s.pass}`,
  ];
}

function statusPrinter(
  ctx: CliContext,
  f: RescueFlags,
): { onStatus(s: RescueStatus): void; finish(s: RescueStatus): void } {
  const tty = !!ctx.stderr.isTTY && f.progress !== 'json';
  const on = !f.quiet && !f.json && (tty || f.progress !== undefined);
  let last = 0;
  let drawn = 0;
  const draw = (s: RescueStatus): void => {
    if (f.progress === 'json') {
      ctx.stderr.write(
        `${JSON.stringify({ phase: s.phase, done: s.rescued + s.badSize, total: s.domainSize, rate: s.elapsedMs > 0 ? Math.round((s.readBytes * 1000) / s.elapsedMs) : 0, eta: null, readErrors: s.readErrors, badAreas: s.badAreas })}\n`,
      );
      return;
    }
    const lines = renderStatus(s);
    if (tty) {
      if (drawn) ctx.stderr.write(`\x1b[${drawn}A`);
      ctx.stderr.write(lines.map((l) => `\r${l}\x1b[K`).join('\n') + '\n');
      drawn = lines.length;
    } else ctx.stderr.write(`${lines.join(' | ').replace(/\s+/g, ' ')}\n`);
  };
  return {
    onStatus(s) {
      const t = Date.now();
      if (!on || t - last < (tty ? 250 : 5000)) return;
      last = t;
      draw(s);
    },
    finish(s) {
      if (on || (!f.quiet && !f.json)) draw(s);
    },
  };
}

/**
 * Creates the destination, or opens the one being resumed (existence without a
 * mapfile was refused before). A raw file that GNU ddrescue left shorter than
 * the domain is extended, as ddrescue would; a device or a fixed-size image
 * that is too small is an error.
 */
async function openDestination(ctx: CliContext, dest: string, f: RescueFlags, needed: number): Promise<Disk> {
  const exists = await ctx.host.exists(dest);
  const dev = isBlockDevice(dest);
  if (dev && !f.force)
    throw new PlatterError('EEXIST', `${dest}: is a block device; use -f to write the rescue onto it`);
  if (!exists) await createImage(ctx.host, dest, { format: f.outputFormat ?? 'raw', size: needed });
  let disk = await openImage(ctx.host, dest, { format: dev ? 'raw' : f.outputFormat, readOnly: false });
  const info = await disk.info();
  if (disk.size < needed && !dev && info.format === 'raw' && disk.storages.length === 1) {
    await disk.close();
    const s = await ctx.host.open(dest, { write: true });
    await s.truncate(needed).finally(() => s.close());
    disk = await openImage(ctx.host, dest, { format: 'raw', readOnly: false });
  }
  if (disk.size < needed) {
    await disk.close();
    throw new PlatterError(
      'EINVAL',
      `${dest}: destination is ${disk.size} bytes, shorter than the ${needed} bytes the rescue needs`,
    );
  }
  return disk;
}

async function runRescue(
  ctx: CliContext,
  source: string,
  dest: string,
  mapfile: string,
  f: RescueFlags,
): Promise<number> {
  const ss = f.sectorSize ? num(f.sectorSize, 'sector size') : 512;
  if (ss <= 0 || ss > 1 << 20) throw invalid(`invalid sector size ${ss}`);
  const clusterSectors = f.clusterSize ? num(f.clusterSize, 'cluster size') : 128;
  if (clusterSectors <= 0 || clusterSectors * ss > 64 << 20)
    throw invalid(`invalid cluster size ${f.clusterSize}`);
  const [skipA, skipB] = (f.skipSize ?? '').split(',');
  const retryPasses = f.retryPasses === undefined ? 0 : Number(f.retryPasses);
  if (!Number.isInteger(retryPasses) || retryPasses < -1)
    throw invalid(`invalid retry passes '${f.retryPasses}'`);

  // Checked before anything is opened or written, as GNU ddrescue does.
  for (const [a, b, what] of [
    [source, dest, 'the source and the destination'],
    [source, mapfile, 'the source and the mapfile'],
    [dest, mapfile, 'the destination and the mapfile'],
  ]) {
    if (sameFile(a, b)) throw invalid(`${b}: ${what} are the same file`);
  }
  const direct = !!f.direct || isBlockDevice(source);
  const src: Storage = await ctx.host.open(source, {
    write: false,
    direct,
    lock: f.forceShare ? 'none' : 'auto',
  });
  let dst: Disk | undefined;
  let io: SyncFileIo | undefined;
  try {
    const srcSize = await src.size();
    const ipos = f.inputPosition ? num(f.inputPosition, 'input position', ss) : 0;
    if (ipos > srcSize)
      throw invalid(`input position ${ipos} is past the end of ${source} (${srcSize} bytes)`);
    const size = Math.min(f.size ? num(f.size, 'size', ss) : srcSize - ipos, srcSize - ipos);
    const opos = f.outputPosition ? num(f.outputPosition, 'output position', ss) : ipos;
    const skipInitial = skipA ? num(skipA, 'skip size', ss) : 64 * 1024;
    const skipMax = skipB
      ? num(skipB, 'maximum skip size', ss)
      : Math.max(skipInitial, Math.min(1 << 30, Math.floor(srcSize / 100 / ss) * ss));

    const existing = await readMapfile(ctx.host, mapfile);
    if (!existing && (await ctx.host.exists(dest)) && !isBlockDevice(dest)) {
      throw new PlatterError(
        'EEXIST',
        `${dest}: already exists and there is no mapfile to resume from; rescue never overwrites (choose a new destination)`,
      );
    }
    let map: RescueMap;
    if (existing) {
      // Like ddrescue: a mapfile that stops short of the domain grows with non-tried
      // blocks; one that reaches past the source (or starts after the domain) is
      // another rescue's.
      if (existing.end > srcSize || existing.start > ipos) {
        throw new PlatterError(
          'EINVAL',
          `${mapfile}: mapfile covers ${existing.start}..${existing.end}, but the source ${source} has ${srcSize} bytes and the rescue domain is ${ipos}..${ipos + size} (a mapfile of another rescue or another size?)`,
        );
      }
      existing.extendTo(ipos + size);
      map = existing;
    } else map = RescueMap.fresh(ipos, size);

    let domain: Array<{ pos: number; size: number }> = [{ pos: ipos, size }];
    if (f.domainMapfile) {
      const d = await readMapfile(ctx.host, f.domainMapfile);
      if (!d) throw new PlatterError('ENOENT', `${f.domainMapfile}: no such domain mapfile`);
      domain = d.find('+').map((b) => ({ pos: b.pos, size: b.size }));
    }

    const started = new Date();
    const commandLine = `platter rescue ${process.argv.slice(3).join(' ')}`.trim();
    const header = { version: VERSION, commandLine, startTime: started };
    // The mapfile exists before the destination does: a kill at any point stays resumable.
    if (!existing) await writeMapfile(ctx.host, mapfile, map, header);
    dst = await openDestination(ctx, dest, f, opos + size);
    const printer = statusPrinter(ctx, f);
    io = await openRescueIo(src, dst);
    const result = await rescue(src, dst, map, {
      sectorSize: ss,
      clusterSectors,
      inputPos: ipos,
      outputPos: opos,
      reverse: !!f.reverse,
      noTrim: f.trim === false,
      noScrape: f.scrape === false,
      retryPasses,
      skipInitial,
      skipMax,
      minReadRate: f.minReadRate ? num(f.minReadRate, 'minimum read rate') : undefined,
      timeoutMs: f.timeout ? parseInterval(f.timeout) : undefined,
      sparse: !!f.sparse,
      synchronous: !!f.synchronous,
      domain,
      signal: ctx.signal,
      saveMap: (m, finished) => writeMapfile(ctx.host, mapfile, m, { ...header, finished }),
      saveIntervalMs: f.mapfileInterval ? parseInterval(f.mapfileInterval) : 5000,
      onStatus: (s) => printer.onStatus(s),
      io,
    });
    io?.close();
    io = undefined;
    await dst.close();
    dst = undefined;
    printer.finish(result);
    if (f.mapPng) writeFileSync(f.mapPng, mapPicture(map, { deflate: (d) => deflateSync(d), crc32 }));
    if (f.json) {
      printJson(ctx, {
        source,
        destination: dest,
        mapfile,
        finished: result.finished,
        domainSize: result.domainSize,
        rescued: result.rescued,
        nonTried: result.nonTried,
        nonTrimmed: result.nonTrimmed,
        nonScraped: result.nonScraped,
        badSize: result.badSize,
        badAreas: result.badAreas,
        readErrors: result.readErrors,
        elapsedMs: result.elapsedMs,
        bad: map.find('-').map((b) => ({ offset: b.pos, length: b.size })),
      });
    }
    return 0;
  } finally {
    try {
      io?.close();
    } catch {
      // closing the second descriptors cannot lose data (the map was saved after a flush)
    }
    await dst?.close().catch(() => undefined);
    await src.close().catch(() => undefined);
  }
}

export const registerRescue: RegisterCommand = (program: Command, ctx, run) => {
  program
    .command('rescue')
    .description('copy a failing drive like GNU ddrescue, resumable from its mapfile')
    .argument('<source>')
    .argument('<dest>')
    .argument('<mapfile>')
    .option('-O, --output-format <fmt>', 'format of a new destination (default raw)')
    .option('-r, --retry-passes <n>', 'retry passes over bad sectors (-1 = until none is left)')
    .option('-R, --reverse', 'reverse the direction of all passes')
    .option('-n, --no-scrape', 'skip the scraping phase')
    .option('-N, --no-trim', 'skip the trimming phase')
    .option('-b, --sector-size <bytes>', 'sector size of the source (512)')
    .option('-c, --cluster-size <sectors>', 'sectors to copy at a time (128)')
    .option('-i, --input-position <bytes>', 'where the rescue domain starts in the source')
    .option(
      '-o, --output-position <bytes>',
      'where the domain starts in the destination (default: input position)',
    )
    .option('-s, --size <bytes>', 'size of the rescue domain')
    .option('-m, --domain-mapfile <file>', 'restrict the domain to the finished blocks of this mapfile')
    .option('-K, --skip-size <initial[,max]>', 'skip size after a read error (64K, max 1% of the source)')
    .option('-a, --min-read-rate <bytes>', 'skip areas read slower than this per second')
    .option('-T, --timeout <interval>', 'stop when no read has succeeded for this long')
    .option('-d, --direct', 'read the source with direct I/O (default for block devices)')
    .option('-S, --sparse', 'do not write all-zero blocks (sparse destination)')
    .option('-f, --force', 'allow writing onto a block device')
    .option('-y, --synchronous', 'flush the destination after every write')
    .option('-U, --force-share', 'read the source without taking a lock')
    .option('--map-png <file>', 'draw the final map as a PNG picture')
    .option('--mapfile-interval <interval>', 'save the mapfile at least this often (5s)')
    .option('--json', 'print the final summary as JSON')
    .option('-p, --progress [mode]', 'status lines in a pipe ("json" for JSON lines)')
    .option('-q, --quiet', 'print nothing but errors')
    .action(
      run((source: string, dest: string, mapfile: string, f: RescueFlags) =>
        runRescue(ctx, source, dest, mapfile, f),
      ),
    );

  program
    .command('mapview')
    .description('draw a ddrescue mapfile as a PNG grid coloured by block status')
    .argument('<mapfile>')
    .requiredOption('--png <file>', 'the picture to write')
    .option('--columns <n>', 'cells per row', '64')
    .option('--rows <n>', 'rows', '32')
    .action(
      run(async (mapfile: string, f: { png: string; columns: string; rows: string }) => {
        const map = await readMapfile(ctx.host, mapfile);
        if (!map) throw new PlatterError('ENOENT', `${mapfile}: no such file`);
        const columns = Number(f.columns);
        const rows = Number(f.rows);
        if (!(columns > 0 && columns <= 1024 && rows > 0 && rows <= 1024))
          throw invalid('--columns and --rows must be 1..1024');
        writeFileSync(f.png, mapPicture(map, { columns, rows, deflate: (d) => deflateSync(d), crc32 }));
        return 0;
      }),
    );
};
