/**
 * Partition tables on a Disk (what `info` shows, like sleuthkit's `mmls`).
 *
 * MBR (sector 0, 512-byte sectors): 0x55 0xAA at 510, four 16-byte entries at
 * 446: boot flag (0x80), CHS start, type, CHS end, start LBA (u32 LE), sector
 * count (u32 LE). Type 0x05/0x0F/0x85 is an extended partition: a chain of EBRs,
 * each with a logical partition (start relative to this EBR) and a link to the
 * next EBR (start relative to the extended partition).
 *
 * GPT (UEFI spec 2.x, chapter 5): a protective MBR entry of type 0xEE, the
 * header at LBA 1 ("EFI PART", header size at 12, CRC32 at 16, my LBA at 24,
 * alternate LBA at 32, disk GUID at 56, entries LBA at 72, entry count at 80,
 * entry size at 84, entries CRC32 at 88), entries of type GUID, unique GUID,
 * first LBA, last LBA (inclusive), attributes, name (UTF-16LE, 72 bytes). A
 * damaged primary header falls back to the backup one at the last LBA.
 *
 * Only 512-byte logical sectors are probed (images, not 4Kn drives).
 * Everything read is bounded: at most 128 logical partitions, 16384 GPT
 * entries of at most 4 KiB, 1 MiB of entry array.
 */
import { u64, viewOf } from '../core/bytes.js';
import type { Disk } from '../core/disk.js';

export interface Partition {
  /** 1-based number as sfdisk/Linux count it (logical MBR partitions from 5). */
  index: number;
  /** Bytes from the start of the disk. */
  start: number;
  /** Bytes. */
  size: number;
  /** MBR: the type byte in hex as sfdisk prints it ("83", "7"); GPT: the type GUID, upper case. */
  type: string;
  /** A readable name for the type, when known. */
  typeName?: string;
  /** MBR only. */
  bootable?: boolean;
  /** MBR only: a logical partition inside the extended one. */
  logical?: boolean;
  /** GPT only: the partition's own GUID (upper case) and its name. */
  guid?: string;
  name?: string;
  /** GPT only: the attribute bits, as a hex string. */
  attributes?: string;
}

export interface PartitionTable {
  scheme: 'mbr' | 'gpt';
  sectorSize: number;
  /** MBR: disk signature (8 hex digits); GPT: disk GUID. */
  id: string;
  partitions: Partition[];
  /** Problems found while reading (bad CRC, backup header used, ...). */
  warnings?: string[];
}

const SECTOR = 512;
const MAX_LOGICAL = 128;
const MAX_ENTRIES = 16384;
const MAX_ENTRY_BYTES = 1 << 20;

const MBR_TYPES: Record<number, string> = {
  0: 'Empty',
  1: 'FAT12',
  4: 'FAT16 <32M',
  5: 'Extended',
  6: 'FAT16',
  7: 'HPFS/NTFS/exFAT',
  11: 'W95 FAT32',
  12: 'W95 FAT32 (LBA)',
  14: 'W95 FAT16 (LBA)',
  15: 'W95 Extended (LBA)',
  17: 'Hidden FAT12',
  39: 'Hidden NTFS WinRE',
  66: 'SFS / Windows dynamic',
  130: 'Linux swap / Solaris',
  131: 'Linux',
  133: 'Linux extended',
  142: 'Linux LVM',
  165: 'FreeBSD',
  166: 'OpenBSD',
  168: 'Darwin UFS',
  175: 'HFS / HFS+',
  238: 'GPT protective',
  239: 'EFI (FAT-12/16/32)',
  253: 'Linux raid autodetect',
};

const GPT_TYPES: Record<string, string> = {
  'C12A7328-F81F-11D2-BA4B-00A0C93EC93B': 'EFI System',
  '21686148-6449-6E6F-744E-656564454649': 'BIOS boot',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': 'Linux LVM',
  'A19D880F-05FC-4D3B-A006-743F0F84911E': 'Linux RAID',
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': 'Linux home',
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'Linux root (x86-64)',
  '44479540-F297-41B2-9AF7-D131D5F0458A': 'Linux root (x86)',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'Microsoft basic data',
  'E3C9E316-0B5C-4DB8-817D-F92DF00215AE': 'Microsoft reserved',
  'DE94BBA4-06D1-4D40-A16A-BFD50179D6AC': 'Windows recovery environment',
  '48465300-0000-11AA-AA11-00306543ECAC': 'Apple HFS/HFS+',
  '7C3457EF-0000-11AA-AA11-00306543ECAC': 'Apple APFS',
  '516E7CB4-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD data',
};

let crcTable: Uint32Array | undefined;
/** CRC-32 (IEEE 802.3, reflected, as GPT uses). */
export function crc32(buf: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = crcTable[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** GUID bytes (first three fields little-endian) -> "XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX". */
export function guidString(b: Uint8Array): string {
  const h = (i: number): string => b[i].toString(16).padStart(2, '0');
  const s = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15].map(h).join('');
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`.toUpperCase();
}

async function readSectors(disk: Disk, lba: number, count: number): Promise<Uint8Array | undefined> {
  const off = lba * SECTOR;
  const len = count * SECTOR;
  if (!Number.isSafeInteger(off) || off < 0 || off + len > disk.size) return undefined;
  const buf = new Uint8Array(len);
  await disk.read(buf, off);
  return buf;
}

const hasBootSignature = (s: Uint8Array | undefined): s is Uint8Array =>
  s !== undefined && s[510] === 0x55 && s[511] === 0xaa;

const isExtended = (t: number): boolean => t === 0x05 || t === 0x0f || t === 0x85;

/** Reads the MBR or GPT of a disk; undefined when it has neither. */
export async function readPartitionTable(disk: Disk): Promise<PartitionTable | undefined> {
  const mbr = await readSectors(disk, 0, 1);
  if (!hasBootSignature(mbr)) return undefined;
  const v = viewOf(mbr);
  const entries = [0, 1, 2, 3].map((i) => {
    const at = 446 + 16 * i;
    return {
      boot: mbr[at],
      type: mbr[at + 4],
      lba: v.getUint32(at + 8, true),
      count: v.getUint32(at + 12, true),
    };
  });
  // A boot flag other than 0x00/0x80 means this is not a partition table (e.g. a FAT boot sector).
  if (entries.some((e) => e.boot !== 0 && e.boot !== 0x80)) return undefined;
  if (entries.some((e) => e.type === 0xee)) {
    const gpt = await readGpt(disk);
    if (gpt) return gpt;
  }
  const table: PartitionTable = {
    scheme: 'mbr',
    sectorSize: SECTOR,
    id: v.getUint32(440, true).toString(16).padStart(8, '0'),
    partitions: [],
  };
  const warnings: string[] = [];
  let extended: { lba: number; count: number } | undefined;
  entries.forEach((e, i) => {
    if (e.type === 0 || e.count === 0) return;
    table.partitions.push(mbrPartition(i + 1, e.type, e.lba, e.count, e.boot === 0x80, false));
    if (isExtended(e.type) && !extended) extended = { lba: e.lba, count: e.count };
  });
  if (extended) {
    // Logical partitions: follow the EBR chain, guarding against loops and runaways.
    let ebr = extended.lba;
    const seen = new Set<number>();
    let index = 5;
    while (ebr !== undefined && index < 5 + MAX_LOGICAL) {
      if (seen.has(ebr)) {
        warnings.push(`extended partition chain loops back to sector ${ebr}`);
        break;
      }
      seen.add(ebr);
      const s = await readSectors(disk, ebr, 1);
      if (!hasBootSignature(s)) {
        warnings.push(`extended boot record at sector ${ebr} is missing or has no signature`);
        break;
      }
      const sv = viewOf(s);
      const type = s[446 + 4];
      const rel = sv.getUint32(446 + 8, true);
      const count = sv.getUint32(446 + 12, true);
      if (type !== 0 && count > 0) {
        table.partitions.push(mbrPartition(index++, type, ebr + rel, count, s[446] === 0x80, true));
      }
      const nextType = s[462 + 4];
      const nextRel = sv.getUint32(462 + 8, true);
      if (!isExtended(nextType) || nextRel === 0) break;
      ebr = extended.lba + nextRel;
    }
  }
  if (warnings.length) table.warnings = warnings;
  return table;
}

function mbrPartition(
  index: number,
  type: number,
  lba: number,
  count: number,
  boot: boolean,
  logical: boolean,
): Partition {
  const p: Partition = {
    index,
    start: lba * SECTOR,
    size: count * SECTOR,
    type: type.toString(16),
    bootable: boot,
  };
  if (MBR_TYPES[type]) p.typeName = MBR_TYPES[type];
  if (logical) p.logical = true;
  return p;
}

async function readGpt(disk: Disk): Promise<PartitionTable | undefined> {
  const warnings: string[] = [];
  const lastLba = Math.floor(disk.size / SECTOR) - 1;
  let parsed = await readGptAt(disk, 1, warnings);
  if (!parsed && lastLba > 1) {
    parsed = await readGptAt(disk, lastLba, warnings);
    if (parsed) warnings.push('primary GPT header is damaged; using the backup header');
  }
  if (!parsed) return undefined;
  if (warnings.length) parsed.warnings = warnings;
  return parsed;
}

async function readGptAt(disk: Disk, lba: number, warnings: string[]): Promise<PartitionTable | undefined> {
  const h = await readSectors(disk, lba, 1);
  if (!h || new TextDecoder().decode(h.subarray(0, 8)) !== 'EFI PART') return undefined;
  const v = viewOf(h);
  const where = lba === 1 ? 'primary' : 'backup';
  const headerSize = v.getUint32(12, true);
  if (headerSize < 92 || headerSize > SECTOR) {
    warnings.push(`${where} GPT header size ${headerSize} is outside 92..${SECTOR}`);
    return undefined;
  }
  const hdr = h.slice(0, headerSize);
  viewOf(hdr).setUint32(16, 0, true);
  if (crc32(hdr) !== v.getUint32(16, true)) {
    warnings.push(`${where} GPT header CRC32 does not match`);
    return undefined;
  }
  const entriesLba = u64(v, 72, true, 'GPT partition entries LBA', disk.name);
  const count = v.getUint32(80, true);
  const entrySize = v.getUint32(84, true);
  if (
    entrySize < 128 ||
    entrySize % 8 !== 0 ||
    entrySize > 4096 ||
    count > MAX_ENTRIES ||
    count * entrySize > MAX_ENTRY_BYTES
  ) {
    warnings.push(`${where} GPT entry array (${count} entries of ${entrySize} bytes) is out of bounds`);
    return undefined;
  }
  const arr = await readSectors(disk, entriesLba, Math.ceil((count * entrySize) / SECTOR));
  if (!arr) {
    warnings.push(`${where} GPT entry array at LBA ${entriesLba} is past the end of the disk`);
    return undefined;
  }
  if (crc32(arr.subarray(0, count * entrySize)) !== v.getUint32(88, true)) {
    warnings.push(`${where} GPT entry array CRC32 does not match`);
  }
  const av = viewOf(arr);
  const partitions: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const at = i * entrySize;
    const typeBytes = arr.subarray(at, at + 16);
    if (typeBytes.every((b) => b === 0)) continue;
    const first = u64(av, at + 32, true, `GPT entry ${i + 1} first LBA`, disk.name);
    const last = u64(av, at + 40, true, `GPT entry ${i + 1} last LBA`, disk.name);
    const type = guidString(typeBytes);
    const nameBytes = arr.subarray(at + 56, at + Math.min(entrySize, 128));
    let name = Buffer.from(nameBytes).toString('utf16le');
    const nul = name.indexOf('\0');
    if (nul >= 0) name = name.slice(0, nul);
    const p: Partition = {
      index: i + 1,
      start: first * SECTOR,
      size: last >= first ? (last - first + 1) * SECTOR : 0,
      type,
      guid: guidString(arr.subarray(at + 16, at + 32)),
      attributes: av.getBigUint64(at + 48, true).toString(16),
    };
    if (GPT_TYPES[type]) p.typeName = GPT_TYPES[type];
    if (name) p.name = name;
    partitions.push(p);
  }
  return { scheme: 'gpt', sectorSize: SECTOR, id: guidString(h.subarray(56, 72)), partitions };
}

/** mmls-like lines: one per partition, sectors of `sectorSize` bytes. */
export function formatPartitionTable(t: PartitionTable): string[] {
  const ss = t.sectorSize;
  const lines = [
    `${t.scheme === 'gpt' ? 'GPT' : 'DOS (MBR)'} partition table, id ${t.id}, units are ${ss}-byte sectors`,
    `  ${'#'.padEnd(4)}${'Start'.padStart(12)}${'End'.padStart(12)}${'Length'.padStart(12)}  Description`,
  ];
  for (const p of t.partitions) {
    const start = p.start / ss;
    const len = p.size / ss;
    const desc =
      t.scheme === 'gpt'
        ? `${p.name || p.typeName || p.type} (${p.typeName ?? p.type}) guid ${p.guid}`
        : `${p.typeName ?? 'Unknown'} (0x${p.type})${p.bootable ? ' bootable' : ''}${p.logical ? ' logical' : ''}`;
    lines.push(
      `  ${String(p.index).padEnd(4)}${String(start).padStart(12)}${String(start + Math.max(len, 1) - 1).padStart(12)}${String(len).padStart(12)}  ${desc}`,
    );
  }
  for (const w of t.warnings ?? []) lines.push(`  warning: ${w}`);
  return lines;
}
