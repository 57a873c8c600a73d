/**
 * GNU ddrescue's mapfile (ddrescue manual, "Mapfile structure"):
 *
 *   # comment lines
 *   0x00120000     ?               1        current_pos  current_status  current_pass
 *   0x00000000  0x00100000  +               pos  size  status   (one line per block)
 *
 * Block status:  ?  non-tried   *  non-trimmed   /  non-scraped   -  bad sector   +  finished
 * Current status: ? copying  * trimming  / scraping  - retrying  F filling  G generating  + finished
 *
 * Blocks are kept sorted, contiguous and merged; `set()` splits and merges.
 */
import { PlatterError } from '../../core/errors.js';

export type BlockStatus = '?' | '*' | '/' | '-' | '+';
export type CurrentStatus = '?' | '*' | '/' | '-' | 'F' | 'G' | '+';

export interface Block {
  pos: number;
  size: number;
  status: BlockStatus;
}

const BLOCK_STATUSES = new Set<string>(['?', '*', '/', '-', '+']);
const CURRENT_STATUSES = new Set<string>(['?', '*', '/', '-', 'F', 'G', '+']);

/** The rescue map: blocks tiling [start, end) in order. */
export class RescueMap {
  blocks: Block[];
  currentPos = 0;
  currentStatus: CurrentStatus = '?';
  currentPass = 1;

  constructor(blocks: Block[]) {
    this.blocks = blocks;
  }

  static fresh(pos: number, size: number): RescueMap {
    return new RescueMap(size > 0 ? [{ pos, size, status: '?' }] : []);
  }

  get start(): number {
    return this.blocks[0]?.pos ?? 0;
  }

  get end(): number {
    const last = this.blocks[this.blocks.length - 1];
    return last ? last.pos + last.size : 0;
  }

  /** Index of the block containing `pos`, or -1. Binary search. */
  indexAt(pos: number): number {
    let lo = 0;
    let hi = this.blocks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const b = this.blocks[mid];
      if (pos < b.pos) hi = mid - 1;
      else if (pos >= b.pos + b.size) lo = mid + 1;
      else return mid;
    }
    return -1;
  }

  statusAt(pos: number): BlockStatus | undefined {
    const i = this.indexAt(pos);
    return i < 0 ? undefined : this.blocks[i].status;
  }

  /** Marks [pos, pos+size) with `status` (clipped to the map), merging neighbours. */
  set(pos: number, size: number, status: BlockStatus): void {
    const from = Math.max(pos, this.start);
    const to = Math.min(pos + size, this.end);
    if (to <= from) return;
    let i = this.indexAt(from);
    const j = this.indexAt(to - 1);
    const first = this.blocks[i];
    const last = this.blocks[j];
    const repl: Block[] = [];
    if (first.pos < from) repl.push({ pos: first.pos, size: from - first.pos, status: first.status });
    repl.push({ pos: from, size: to - from, status });
    const lastEnd = last.pos + last.size;
    if (lastEnd > to) repl.push({ pos: to, size: lastEnd - to, status: last.status });
    this.blocks.splice(i, j - i + 1, ...repl);
    // Merge around the replaced range.
    i = Math.max(0, i - 1);
    const stop = Math.min(this.blocks.length - 1, i + repl.length + 1);
    for (let k = stop; k > i; k--) {
      const a = this.blocks[k - 1];
      const b = this.blocks[k];
      if (a.status === b.status) {
        a.size += b.size;
        this.blocks.splice(k, 1);
      }
    }
  }

  /** Grows the map to `end` with non-tried blocks (a mapfile that stopped short, as ddrescue does). */
  extendTo(end: number): void {
    const from = this.end;
    if (end <= from) return;
    const last = this.blocks[this.blocks.length - 1];
    if (last?.status === '?') last.size += end - from;
    else this.blocks.push({ pos: from, size: end - from, status: '?' });
  }

  /** Total bytes per status. */
  totals(): Record<BlockStatus, number> & { areas: Record<BlockStatus, number> } {
    const t = { '?': 0, '*': 0, '/': 0, '-': 0, '+': 0, areas: { '?': 0, '*': 0, '/': 0, '-': 0, '+': 0 } };
    for (const b of this.blocks) {
      t[b.status] += b.size;
      t.areas[b.status]++;
    }
    return t;
  }

  /** Blocks with one of the statuses, in position order (copies). */
  find(statuses: string): Block[] {
    return this.blocks.filter((b) => statuses.includes(b.status)).map((b) => ({ ...b }));
  }
}

const hex = (n: number): string => `0x${n.toString(16).toUpperCase().padStart(8, '0')}`;

export interface MapfileHeader {
  commandLine?: string;
  startTime?: Date;
  now?: Date;
  finished?: boolean;
  version?: string;
}

function stamp(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Serialises a map exactly in ddrescue's layout. */
export function formatMapfile(map: RescueMap, h: MapfileHeader = {}): string {
  const lines = [`# Mapfile. Created by platter ${h.version ?? ''}`.trimEnd()];
  if (h.commandLine) lines.push(`# Command line: ${h.commandLine}`);
  if (h.startTime) lines.push(`# Start time:   ${stamp(h.startTime)}`);
  lines.push(`# Current time: ${stamp(h.now ?? new Date())}`);
  if (h.finished) lines.push('# Finished');
  lines.push('# current_pos  current_status  current_pass');
  lines.push(`${hex(map.currentPos)}     ${map.currentStatus}               ${map.currentPass}`);
  lines.push('#      pos        size  status');
  for (const b of map.blocks) lines.push(`${hex(b.pos)}  ${hex(b.size)}  ${b.status}`);
  return `${lines.join('\n')}\n`;
}

/** Numbers as ddrescue writes/accepts them: 0x hex, 0 octal, or decimal. */
function parseNum(s: string, what: string, name: string, line: number): number {
  let v: number;
  if (/^0x[0-9a-f]+$/i.test(s)) v = Number.parseInt(s.slice(2), 16);
  else if (/^0[0-7]+$/.test(s)) v = Number.parseInt(s.slice(1), 8);
  else if (/^\d+$/.test(s)) v = Number(s);
  else throw new PlatterError('EINVAL', `${name}: line ${line}: invalid ${what} '${s}'`);
  if (!Number.isSafeInteger(v))
    throw new PlatterError('EINVAL', `${name}: line ${line}: ${what} ${s} is too large`);
  return v;
}

/** Parses a mapfile written by platter or GNU ddrescue; rejects overlaps, gaps out of order and bad statuses. */
export function parseMapfile(text: string, name: string): RescueMap {
  const blocks: Block[] = [];
  let status: { pos: number; st: CurrentStatus; pass: number } | undefined;
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(/\s+/);
    if (!status) {
      if (f.length < 2 || f.length > 3 || !CURRENT_STATUSES.has(f[1])) {
        throw new PlatterError(
          'EINVAL',
          `${name}: line ${n + 1}: expected 'current_pos current_status [current_pass]'`,
        );
      }
      status = {
        pos: parseNum(f[0], 'current position', name, n + 1),
        st: f[1] as CurrentStatus,
        pass: f[2] ? parseNum(f[2], 'pass', name, n + 1) : 1,
      };
      continue;
    }
    if (f.length !== 3 || !BLOCK_STATUSES.has(f[2])) {
      throw new PlatterError(
        'EINVAL',
        `${name}: line ${n + 1}: expected 'pos size status' with status one of ?*/-+`,
      );
    }
    const pos = parseNum(f[0], 'position', name, n + 1);
    const size = parseNum(f[1], 'size', name, n + 1);
    if (size <= 0) throw new PlatterError('EINVAL', `${name}: line ${n + 1}: block size must be positive`);
    const prev = blocks[blocks.length - 1];
    if (prev && pos < prev.pos + prev.size) {
      throw new PlatterError(
        'EINVAL',
        `${name}: line ${n + 1}: block at ${hex(pos)} overlaps or is out of order`,
      );
    }
    if (prev && pos > prev.pos + prev.size) {
      // ddrescue fills gaps as non-tried.
      blocks.push({ pos: prev.pos + prev.size, size: pos - (prev.pos + prev.size), status: '?' });
    }
    if (prev && prev.status === f[2] && prev.pos + prev.size === pos) prev.size += size;
    else blocks.push({ pos, size, status: f[2] as BlockStatus });
  }
  if (!status) throw new PlatterError('EINVAL', `${name}: not a ddrescue mapfile (no current status line)`);
  const map = new RescueMap(blocks);
  map.currentPos = status.pos;
  map.currentStatus = status.st;
  map.currentPass = status.pass;
  return map;
}
