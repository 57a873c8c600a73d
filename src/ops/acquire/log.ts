/**
 * The acquisition record: what `acquire --json` prints and what the log file
 * holds as text. The text keeps one fact per line so that people can read it
 * and `verify` can find the hashes again (the "Hashes of the source" block).
 */
import { formatSize } from '../../core/bytes.js';
import type { AcquireResult, PiecewiseHash, Range, Verification } from '../acquire.js';
import type { Digests, HashAlgorithm } from '../hash.js';

export interface SourceIdentity {
  path: string;
  size: number;
  sectorSize: number;
  blockDevice: boolean;
  model?: string;
  serial?: string;
  vendor?: string;
  /** Read through O_DIRECT (exact bad-sector records). */
  directIo?: boolean;
  mounted?: boolean;
  writable?: boolean;
}

export interface AcquisitionRecord {
  tool: { name: string; version: string };
  startTime: string;
  endTime: string;
  seconds: number;
  source: SourceIdentity;
  destination: { format: string; path: string; files: string[]; compression?: string; segmentSize?: number };
  caseMetadata: Record<string, string>;
  hashes: Digests;
  hashWindow?: number;
  piecewise?: PiecewiseHash[];
  unreadable: Range[];
  unreadableBytes: number;
  failedReads: number;
  verification: Verification;
  notes: string[];
}

const LABELS: Record<string, string> = {
  caseNumber: 'Case number',
  evidenceNumber: 'Evidence number',
  examiner: 'Examiner',
  description: 'Description',
  notes: 'Notes',
};

export function buildRecord(
  r: AcquireResult,
  x: Omit<
    AcquisitionRecord,
    'hashes' | 'piecewise' | 'unreadable' | 'unreadableBytes' | 'failedReads' | 'verification'
  > & {
    hashWindow?: number;
  },
): AcquisitionRecord {
  return {
    ...x,
    hashes: r.hashes,
    ...(x.hashWindow ? { hashWindow: x.hashWindow, piecewise: r.piecewise } : {}),
    unreadable: r.unreadable,
    unreadableBytes: r.unreadable.reduce((n, u) => n + u.length, 0),
    failedReads: r.failedReads,
    verification: r.verification,
  };
}

const pad = (s: string, n: number): string => (s.length >= n ? `${s} ` : s + ' '.repeat(n - s.length));

/**
 * A value on one line of the log: line breaks and other control characters in
 * case metadata, paths or a drive's own strings become spaces, so no value can
 * add lines (a forged "Hashes of the source" section would fool verify). The
 * E01 header flattens them the same way.
 */
const oneLine = (v: string | number): string => String(v).replace(/[\u0000-\u001f\u007f]/g, ' ');

export function recordText(rec: AcquisitionRecord): string {
  const L: string[] = [];
  const kv = (k: string, v: string | number): void => {
    L.push(`${pad(`${k}:`, 18)}${oneLine(v)}`);
  };
  L.push('platter acquisition log', '');
  kv('Tool', `${rec.tool.name} ${rec.tool.version}`);
  kv('Started', rec.startTime);
  kv('Finished', rec.endTime);
  kv('Duration', `${rec.seconds.toFixed(1)} s`);
  L.push('');
  kv('Source', rec.source.path);
  kv('Block device', rec.source.blockDevice ? 'yes' : 'no');
  if (rec.source.vendor) kv('Vendor', rec.source.vendor);
  if (rec.source.model) kv('Model', rec.source.model);
  if (rec.source.serial) kv('Serial', rec.source.serial);
  kv('Size', `${rec.source.size} bytes (${formatSize(rec.source.size)})`);
  kv('Sector size', rec.source.sectorSize);
  kv('Direct I/O', rec.source.directIo ? 'yes' : 'no');
  L.push('');
  kv('Destination', `${rec.destination.path} (${rec.destination.format})`);
  for (const f of rec.destination.files) kv('  File', f);
  if (rec.destination.compression) kv('Compression', rec.destination.compression);
  if (rec.destination.segmentSize) kv('Segment size', rec.destination.segmentSize);
  L.push('');
  for (const [k, label] of Object.entries(LABELS)) {
    if (rec.caseMetadata[k] !== undefined) kv(label, rec.caseMetadata[k]);
  }
  L.push('');
  L.push(`Hashes of the source (${rec.source.size} bytes):`);
  for (const [a, h] of Object.entries(rec.hashes)) L.push(`  ${pad(`${a}:`, 8)}${h}`);
  L.push('');
  if (rec.piecewise && rec.hashWindow) {
    L.push(`Piecewise hashes (window ${rec.hashWindow} bytes):`);
    for (const p of rec.piecewise) {
      const hs = Object.entries(p.hashes)
        .map(([a, h]) => `${a} ${h}`)
        .join(' ');
      L.push(`  ${p.offset}-${p.offset + p.length - 1}: ${hs}`);
    }
    L.push('');
  }
  if (rec.unreadable.length === 0) {
    L.push('Unreadable: none');
  } else {
    const s = rec.source.sectorSize;
    L.push(`Unreadable: ${rec.unreadable.length} range(s), ${rec.unreadableBytes} bytes, filled with zeros:`);
    for (const u of rec.unreadable) {
      L.push(
        `  offset ${u.offset} length ${u.length} (sectors ${Math.floor(u.offset / s)}-${Math.ceil((u.offset + u.length) / s) - 1})`,
      );
    }
  }
  kv('Failed reads', rec.failedReads);
  L.push('');
  const v = rec.verification;
  L.push(`Verification: ${v.result}${v.detail ? ` (${v.detail})` : ''}`);
  for (const [a, h] of Object.entries(v.hashes ?? {})) L.push(`  ${pad(`${a}:`, 8)}${h}`);
  if (rec.notes.length) {
    L.push('', 'Notes:');
    for (const n of rec.notes) L.push(`  - ${oneLine(n)}`);
  }
  return `${L.join('\n')}\n`;
}

export interface ParsedRecord {
  size?: number;
  hashes: Digests;
  segmentSize?: number;
  hashWindow?: number;
  piecewise: PiecewiseHash[];
}

/** The source hashes, size and piecewise hashes written by recordText() (for `verify` of raw/split images). */
export function parseRecordText(text: string): ParsedRecord {
  const lines = text.split(/\r?\n/);
  const i = lines.findIndex((l) => /^Hashes of the source/.test(l));
  const hashes: Digests = {};
  const piecewise: PiecewiseHash[] = [];
  const seg = lines.map((l) => /^Segment size:\s+(\d+)\s*$/.exec(l)).find((m) => m)?.[1];
  const w = lines.findIndex((l) => /^Piecewise hashes \(window \d+ bytes\):/.test(l));
  if (w >= 0) {
    for (let j = w + 1; j < lines.length && lines[j].trim() !== ''; j++) {
      const m = /^\s+(\d+)-(\d+):\s+(.*)$/.exec(lines[j]);
      if (!m) continue;
      const parts = m[3].trim().split(/\s+/);
      const hs: Digests = {};
      for (let k = 0; k + 1 < parts.length; k += 2) hs[parts[k] as HashAlgorithm] = parts[k + 1];
      piecewise.push({ offset: Number(m[1]), length: Number(m[2]) - Number(m[1]) + 1, hashes: hs });
    }
  }
  const hashWindow = w >= 0 ? Number(/window (\d+) bytes/.exec(lines[w])?.[1]) : undefined;
  const extra = {
    piecewise,
    ...(seg ? { segmentSize: Number(seg) } : {}),
    ...(hashWindow ? { hashWindow } : {}),
  };
  if (i < 0) return { hashes, ...extra };
  const size = /\((\d+) bytes\)/.exec(lines[i])?.[1];
  for (let j = i + 1; j < lines.length && lines[j].trim() !== ''; j++) {
    const m = /^\s+(md5|sha1|sha256|sha512):\s+([0-9a-f]+)\s*$/.exec(lines[j]);
    if (m) hashes[m[1] as HashAlgorithm] = m[2];
  }
  return { size: size === undefined ? undefined : Number(size), hashes, ...extra };
}
