/**
 * The VMDK text descriptor ("Virtual Disk Format 1.1", section "The Descriptor
 * File"): `key=value` header lines, one line per extent, and `ddb.key = "value"`
 * disk-database lines. It is either a separate small file or embedded in a
 * sparse extent (descriptorOffset/descriptorSize, in sectors).
 *
 *   # Disk DescriptorFile
 *   version=1
 *   CID=fffffffe            content ID, changed on the first write after open
 *   parentCID=ffffffff      the parent's CID when this is a delta link
 *   createType="monolithicSparse"
 *   parentFileNameHint="base.vmdk"      (delta links only)
 *   RW 4192256 SPARSE "disk-s001.vmdk"  ACCESS SECTORS TYPE ["FILE" [OFFSET]]
 *   ddb.adapterType = "ide"
 *
 * Parsing keeps every line (comments, unknown keys, odd spacing) so that a
 * rewrite (new CID, new size) changes only the values it means to change.
 */
import { corrupt } from '../../core/errors.js';

export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';
/** Extent types of the specification; platter reads FLAT, SPARSE, ZERO and VMFS. */
export type ExtentType =
  | 'FLAT'
  | 'SPARSE'
  | 'ZERO'
  | 'VMFS'
  | 'VMFSSPARSE'
  | 'VMFSRDM'
  | 'VMFSRAW'
  | 'SESPARSE';

export interface ExtentLine {
  access: ExtentAccess;
  sectors: number;
  type: ExtentType;
  /** File name as written (relative to the descriptor); absent for ZERO. */
  file?: string;
  /** FLAT/VMFS: where the extent starts in its file, in sectors. */
  offsetSectors: number;
}

type Line =
  | { kind: 'text'; text: string }
  | { kind: 'key'; key: string; value: string; ddb: boolean; quoted: boolean }
  | { kind: 'extent'; index: number };

const EXTENT_TYPES = new Set<ExtentType>([
  'FLAT',
  'SPARSE',
  'ZERO',
  'VMFS',
  'VMFSSPARSE',
  'VMFSRDM',
  'VMFSRAW',
  'SESPARSE',
]);
const EXTENT_RE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/;
const KEY_RE = /^([A-Za-z][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$/;

/** Largest descriptor platter reads (a real one is well under 10 KiB). */
export const MAX_DESCRIPTOR = 1 << 20;
/** Most extents a descriptor may list (a 64 TiB split disk has 32768). */
const MAX_EXTENTS = 65536;

export class Descriptor {
  private lines: Line[] = [];
  extents: ExtentLine[] = [];
  /** Parsed from an image (false: made up for a sparse extent that carries none). */
  fromFile = true;

  /** A header (non-ddb) or ddb value, without quotes. */
  get(key: string): string | undefined {
    for (const l of this.lines) if (l.kind === 'key' && l.key === key) return l.value;
    return undefined;
  }

  /** Sets a value, keeping its place; a new key goes after the last key of its kind. */
  set(key: string, value: string, quoted = true): void {
    const ddb = key.startsWith('ddb.');
    for (const l of this.lines) {
      if (l.kind === 'key' && l.key === key) {
        l.value = value;
        return;
      }
    }
    let at = -1;
    this.lines.forEach((l, i) => {
      if (l.kind === 'key' && l.ddb === ddb) at = i;
    });
    if (at < 0) at = ddb ? this.lines.length - 1 : this.lines.findIndex((l) => l.kind === 'extent') - 1;
    if (at < -1) at = this.lines.length - 1;
    this.lines.splice(at + 1, 0, { kind: 'key', key, value, ddb, quoted });
  }

  delete(key: string): void {
    this.lines = this.lines.filter((l) => !(l.kind === 'key' && l.key === key));
  }

  keys(): string[] {
    return this.lines.flatMap((l) => (l.kind === 'key' ? [l.key] : []));
  }

  /** Text as written back; extent lines are regenerated from `extents` in place of the old ones. */
  serialize(): string {
    const out: string[] = [];
    let extentsDone = false;
    const emitExtents = (): void => {
      if (extentsDone) return;
      extentsDone = true;
      for (const e of this.extents) out.push(formatExtent(e));
    };
    for (const l of this.lines) {
      if (l.kind === 'text') out.push(l.text);
      else if (l.kind === 'extent') emitExtents();
      else if (l.ddb) out.push(`${l.key} = "${l.value}"`);
      else out.push(l.quoted ? `${l.key}="${l.value}"` : `${l.key}=${l.value}`);
    }
    if (!extentsDone) emitExtents();
    return `${out.join('\n')}\n`;
  }

  static parse(text: string, file: string): Descriptor {
    const d = new Descriptor();
    for (const raw of text.split('\n')) {
      const line = raw.replace(/\r$/, '');
      const t = line.trim();
      if (t === '' || t.startsWith('#')) {
        d.lines.push({ kind: 'text', text: line });
        continue;
      }
      const ext = EXTENT_RE.exec(t);
      if (ext) {
        const type = ext[3].toUpperCase() as ExtentType;
        if (!EXTENT_TYPES.has(type))
          throw corrupt(file, `descriptor extent line '${t}' has unknown type ${ext[3]}`);
        const sectors = Number(ext[2]);
        if (!Number.isSafeInteger(sectors * 512) || sectors <= 0) {
          throw corrupt(file, `descriptor extent line '${t}' has invalid size ${ext[2]} sectors`);
        }
        const offsetSectors = ext[5] === undefined ? 0 : Number(ext[5]);
        if (!Number.isSafeInteger(offsetSectors * 512)) {
          throw corrupt(file, `descriptor extent line '${t}' has invalid offset ${ext[5]}`);
        }
        if (type === 'ZERO' ? ext[4] !== undefined : ext[4] === undefined || ext[4] === '') {
          throw corrupt(
            file,
            `descriptor extent line '${t}': ${type === 'ZERO' ? 'a ZERO extent has no file' : 'file name missing'}`,
          );
        }
        if (type === 'FLAT' && ext[5] === undefined) {
          throw corrupt(file, `descriptor extent line '${t}': a FLAT extent needs an offset`);
        }
        if (type !== 'FLAT' && ext[5] !== undefined && offsetSectors !== 0) {
          throw corrupt(file, `descriptor extent line '${t}': only FLAT extents have an offset`);
        }
        if (d.extents.length >= MAX_EXTENTS)
          throw corrupt(file, `descriptor lists more than ${MAX_EXTENTS} extents`);
        d.lines.push({ kind: 'extent', index: d.extents.length });
        d.extents.push({ access: ext[1] as ExtentAccess, sectors, type, file: ext[4], offsetSectors });
        continue;
      }
      const kv = KEY_RE.exec(t);
      if (kv) {
        const quoted = kv[2].length >= 2 && kv[2].startsWith('"') && kv[2].endsWith('"');
        const value = quoted ? kv[2].slice(1, -1) : kv[2];
        d.lines.push({ kind: 'key', key: kv[1], value, ddb: kv[1].startsWith('ddb.'), quoted });
        continue;
      }
      // Something we do not understand: keep it verbatim.
      d.lines.push({ kind: 'text', text: line });
    }
    while (d.lines.length > 0) {
      const last = d.lines[d.lines.length - 1];
      if (last.kind === 'text' && last.text.trim() === '') d.lines.pop();
      else break;
    }
    return d;
  }

  /** A new descriptor in the layout qemu-img and VMware write. */
  static create(fields: {
    cid: number;
    parentCid: number;
    createType: string;
    parentFileNameHint?: string;
    extents: ExtentLine[];
    ddb: Array<[string, string]>;
  }): Descriptor {
    const lines = [
      '# Disk DescriptorFile',
      'version=1',
      `CID=${hex8(fields.cid)}`,
      `parentCID=${hex8(fields.parentCid)}`,
      `createType="${fields.createType}"`,
    ];
    if (fields.parentFileNameHint !== undefined)
      lines.push(`parentFileNameHint="${fields.parentFileNameHint}"`);
    lines.push('', '# Extent description', '@EXTENTS@', '', '# The Disk Data Base', '#DDB', '');
    for (const [k, v] of fields.ddb) lines.push(`${k} = "${v}"`);
    const d = Descriptor.parse(lines.join('\n').replace('@EXTENTS@', 'RW 1 ZERO'), 'new descriptor');
    d.extents = fields.extents;
    d.fromFile = false;
    return d;
  }
}

export function formatExtent(e: ExtentLine): string {
  if (e.type === 'ZERO') return `${e.access} ${e.sectors} ZERO`;
  const base = `${e.access} ${e.sectors} ${e.type} "${e.file}"`;
  return e.type === 'FLAT' ? `${base} ${e.offsetSectors}` : base;
}

export function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

/** CID / parentCID: 32-bit hexadecimal. */
export function parseCid(value: string | undefined, key: string, file: string): number {
  if (value === undefined) throw corrupt(file, `descriptor has no ${key}`);
  if (!/^[0-9a-fA-F]{1,8}$/.test(value))
    throw corrupt(file, `descriptor ${key} '${value}' is not a 32-bit hexadecimal number`);
  return Number.parseInt(value, 16);
}

/** parentCID of a disk without a parent. */
export const NO_PARENT = 0xffffffff;

/** Does this text look like a descriptor? (QEMU's rule: comments, blank lines, then `version=1|2|3`.) */
export function looksLikeDescriptor(head: Uint8Array): boolean {
  const text = new TextDecoder('latin1').decode(head);
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (line.startsWith('#') || line.trim() === '') continue;
    return /^version=[123]$/.test(line);
  }
  return false;
}
