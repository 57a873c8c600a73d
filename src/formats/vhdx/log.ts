/**
 * The VHDX log ([MS-VHDX] 2.3): a circular buffer of 4 KiB sectors at
 * header.logOffset. Metadata changes are first written there as one entry
 *
 *   [entry header (64 B) + descriptors (32 B each)] ... [data sectors] ...
 *
 * (a data descriptor keeps bytes 0-7 and 4092-4095 of its 4 KiB update; the
 * data sector keeps bytes 8-4091 between the split sequence number), then
 * applied in place. A non-zero LogGuid in the current header means "the log may
 * hold updates not yet applied": the newest valid sequence of entries whose
 * head's Tail lies inside it (the active sequence) must be replayed before the
 * file is used. Entries are valid only with the header's LogGuid, a matching
 * sequence number in every descriptor and data sector, and a CRC-32C over the
 * whole entry.
 *
 * platter's writer makes each transaction one entry at log offset 0 under a new
 * LogGuid: entry written and flushed, then the headers take the LogGuid, then
 * the pages are applied and flushed, then the LogGuid is cleared. A kill at any
 * step leaves either the old state (LogGuid still zero) or a replayable log.
 */

import { viewOf } from '../../core/bytes.js';
import { corrupt, unsupported } from '../../core/errors.js';
import { type Storage, writeZerosTo } from '../../core/storage.js';
import { crcWithHole } from './crc32c.js';
import { type Guid, guidEqual, isZeroGuid } from './guid.js';
import { type Header, MiB } from './layout.js';

export const SECTOR = 4096;
const SIG_LOGE = 0x65676f6c; // "loge"
const SIG_DESC = 0x63736564; // "desc"
const SIG_ZERO = 0x6f72657a; // "zero"
const SIG_DATA = 0x61746164; // "data"
/** platter refuses to load logs larger than this into memory. */
const MAX_LOG = 256 * MiB;
/** A descriptor may not reach past this (64 TiB of file plus slack). */
const MAX_TARGET = 2 ** 47;

/** One update of the file: 4 KiB of data, or a run of zeros. */
export interface LogOp {
  offset: number;
  data?: Uint8Array;
  zeroLength?: number;
}

export interface ActiveLog {
  ops: LogOp[];
  entries: number;
  headSequence: bigint;
  flushedFileOffset: number;
  lastFileOffset: number;
}

interface Entry {
  pos: number;
  length: number;
  tail: number;
  seq: bigint;
  flushed: number;
  last: number;
  ops: LogOp[];
}

function descSectors(count: number): number {
  return Math.ceil((count + 2) / 128);
}

/** Checks the header's log fields; returns the active log, or undefined when the log is empty. */
export async function readActiveLog(
  storage: Storage,
  h: Header,
  fileSize: number,
  file: string,
): Promise<ActiveLog | undefined> {
  if (h.logOffset < MiB || h.logOffset % MiB !== 0) {
    throw corrupt(file, `log offset ${h.logOffset} is not a non-zero multiple of 1 MiB`);
  }
  if (h.logLength % MiB !== 0) throw corrupt(file, `log length ${h.logLength} is not a multiple of 1 MiB`);
  if (isZeroGuid(h.logGuid) || h.logLength === 0) return undefined;
  if (h.logVersion !== 0)
    throw unsupported(`${file}: VHDX log version ${h.logVersion} is not supported (only 0)`);
  if (h.logOffset + h.logLength > fileSize) {
    throw corrupt(
      file,
      `log at ${h.logOffset} length ${h.logLength} is past the end of the file (size ${fileSize})`,
    );
  }
  if (h.logLength > MAX_LOG)
    throw unsupported(
      `${file}: VHDX log of ${h.logLength} bytes is larger than platter replays (${MAX_LOG})`,
    );
  const log = new Uint8Array(h.logLength);
  await storage.read(log, h.logOffset);
  const n = log.length;

  const bytesAt = (pos: number, len: number): Uint8Array => {
    if (pos + len <= n) return log.subarray(pos, pos + len);
    const out = new Uint8Array(len);
    out.set(log.subarray(pos), 0);
    out.set(log.subarray(0, len - (n - pos)), n - pos);
    return out;
  };

  const entryAt = (pos: number): Entry | undefined => {
    const hv = viewOf(log.subarray(pos, pos + 64));
    if (hv.getUint32(0, true) !== SIG_LOGE) return undefined;
    const length = hv.getUint32(8, true);
    const tail = hv.getUint32(12, true);
    const seq = hv.getBigUint64(16, true);
    const count = hv.getUint32(24, true);
    if (length === 0 || length % SECTOR !== 0 || length > n) return undefined;
    if (tail % SECTOR !== 0 || tail >= n || seq === 0n) return undefined;
    if (!guidEqual(log.subarray(pos + 32, pos + 48), h.logGuid)) return undefined;
    const ds = descSectors(count);
    if (ds * SECTOR > length) return undefined;
    const entry = bytesAt(pos, length);
    const ev = viewOf(entry);
    if (ev.getUint32(4, true) !== crcWithHole(entry, 4)) return undefined;
    const flushed = Number(ev.getBigUint64(48, true));
    const last = Number(ev.getBigUint64(56, true));
    const ops: LogOp[] = [];
    let dataSector = ds;
    for (let i = 0; i < count; i++) {
      const at = 64 + i * 32;
      const sig = ev.getUint32(at, true);
      const target = Number(ev.getBigUint64(at + 16, true));
      if (ev.getBigUint64(at + 24, true) !== seq || target % SECTOR !== 0) return undefined;
      if (sig === SIG_ZERO) {
        const zl = Number(ev.getBigUint64(at + 8, true));
        if (zl % SECTOR !== 0 || target + zl > MAX_TARGET) return undefined;
        if (zl > 0) ops.push({ offset: target, zeroLength: zl });
      } else if (sig === SIG_DESC) {
        if ((dataSector + 1) * SECTOR > length || target + SECTOR > MAX_TARGET) return undefined;
        const ds0 = dataSector * SECTOR;
        if (ev.getUint32(ds0, true) !== SIG_DATA) return undefined;
        const sq = (BigInt(ev.getUint32(ds0 + 4, true)) << 32n) | BigInt(ev.getUint32(ds0 + 4092, true));
        if (sq !== seq) return undefined;
        const page = new Uint8Array(SECTOR);
        page.set(entry.subarray(at + 8, at + 16), 0);
        page.set(entry.subarray(ds0 + 8, ds0 + 4092), 8);
        page.set(entry.subarray(at + 4, at + 8), 4092);
        ops.push({ offset: target, data: page });
        dataSector++;
      } else {
        return undefined;
      }
    }
    return { pos, length, tail, seq, flushed, last, ops };
  };

  // The search of [MS-VHDX] 2.3.3: from each candidate tail, extend a run of
  // entries with consecutive sequence numbers; the run is valid when its head's
  // Tail points at one of its entries; keep the valid run with the highest head.
  let best: Entry[] | undefined;
  let tail = 0;
  for (let guard = 0; guard <= n / SECTOR + 1; guard++) {
    const run: Entry[] = [];
    let head = tail;
    while (run.length <= n / SECTOR) {
      const e = entryAt(head);
      if (!e || (run.length > 0 && e.seq !== run[run.length - 1].seq + 1n)) break;
      if (run.some((r) => r.pos === e.pos)) break;
      run.push(e);
      head = (head + e.length) % n;
    }
    const last = run[run.length - 1];
    const start = last ? run.findIndex((r) => r.pos === last.tail) : -1;
    const valid = start >= 0;
    if (valid && (!best || last.seq > best[best.length - 1].seq)) best = run.slice(start);
    const next = valid ? head : tail + SECTOR >= n ? 0 : tail + SECTOR;
    if (next <= tail) break;
    tail = next;
  }
  if (!best) {
    throw corrupt(
      file,
      'the header names a log (LogGuid set) but the log holds no valid entry sequence (bad checksum, signature or sequence)',
    );
  }
  const head = best[best.length - 1];
  if (head.flushed > fileSize) {
    throw corrupt(
      file,
      `log FlushedFileOffset ${head.flushed} is past the end of the file (size ${fileSize}): the file was truncated`,
    );
  }
  // A file grows by blocks and relocated tables; more than 4 GiB past its end is not a lost extension.
  if (head.last > fileSize + 4 * 1024 * MiB) {
    throw corrupt(file, `log LastFileOffset ${head.last} is far past the end of the file (size ${fileSize})`);
  }
  return {
    ops: best.flatMap((e) => e.ops),
    entries: best.length,
    headSequence: head.seq,
    flushedFileOffset: head.flushed,
    lastFileOffset: head.last,
  };
}

/** Applies replayed updates to the file (writing zeros only inside the file; truncate extends with zeros). */
export async function applyLog(storage: Storage, log: ActiveLog): Promise<void> {
  for (const op of log.ops) {
    if (op.data) {
      await storage.write(op.data, op.offset);
      continue;
    }
    const size = await storage.size();
    const end = op.offset + (op.zeroLength ?? 0);
    const inside = Math.min(end, size);
    await writeZerosTo(storage, op.offset, Math.max(0, inside - op.offset));
    if (end > size) await storage.truncate(end);
  }
  if ((await storage.size()) < log.lastFileOffset) await storage.truncate(log.lastFileOffset);
  await storage.flush();
}

/** Reads `buf` at `offset` as the file would be after the log is replayed (read-only opens). */
export function overlay(ops: readonly LogOp[], buf: Uint8Array, offset: number): void {
  const end = offset + buf.length;
  for (const op of ops) {
    const len = op.data ? op.data.length : (op.zeroLength ?? 0);
    const a = Math.max(offset, op.offset);
    const b = Math.min(end, op.offset + len);
    if (a >= b) continue;
    if (op.data) buf.set(op.data.subarray(a - op.offset, b - op.offset), a - offset);
    else buf.fill(0, a - offset, b - offset);
  }
}

/** How many 4 KiB pages one entry can carry in a log of `logLength` bytes. */
export function maxPagesPerEntry(logLength: number): number {
  const sectors = logLength / SECTOR;
  let n = sectors - 1;
  while (n > 0 && descSectors(n) + n > sectors) n--;
  return n;
}

/** Serialises one log entry carrying whole 4 KiB pages. */
export function buildEntry(
  pages: ReadonlyArray<readonly [number, Uint8Array]>,
  logGuid: Guid,
  seq: bigint,
  tail: number,
  fileSize: number,
): Uint8Array {
  const ds = descSectors(pages.length);
  const length = (ds + pages.length) * SECTOR;
  const buf = new Uint8Array(length);
  const v = viewOf(buf);
  v.setUint32(0, SIG_LOGE, true);
  v.setUint32(8, length, true);
  v.setUint32(12, tail, true);
  v.setBigUint64(16, seq, true);
  v.setUint32(24, pages.length, true);
  buf.set(logGuid, 32);
  v.setBigUint64(48, BigInt(fileSize), true);
  v.setBigUint64(56, BigInt(fileSize), true);
  const hi = Number(seq >> 32n);
  const lo = Number(seq & 0xffffffffn);
  pages.forEach(([offset, page], i) => {
    const at = 64 + i * 32;
    v.setUint32(at, SIG_DESC, true);
    buf.set(page.subarray(4092, 4096), at + 4);
    buf.set(page.subarray(0, 8), at + 8);
    v.setBigUint64(at + 16, BigInt(offset), true);
    v.setBigUint64(at + 24, seq, true);
    const d = (ds + i) * SECTOR;
    v.setUint32(d, SIG_DATA, true);
    v.setUint32(d + 4, hi, true);
    buf.set(page.subarray(8, 4092), d + 8);
    v.setUint32(d + 4092, lo, true);
  });
  v.setUint32(4, crcWithHole(buf, 4), true);
  return buf;
}
