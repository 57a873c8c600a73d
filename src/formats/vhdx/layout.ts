/**
 * The fixed part of a VHDX file ([MS-VHDX] 2.1-2.2): the first 1 MiB holds
 *
 *   offset  | size   | what
 *   --------|--------|---------------------------------------------------------
 *   0       | 64 KiB | file type identifier: "vhdxfile" + UTF-16 creator
 *   64 KiB  | 4 KiB  | header 1 ("head", CRC-32C over 4 KiB, sequence number)
 *   128 KiB | 4 KiB  | header 2; the valid one with the higher sequence is current
 *   192 KiB | 64 KiB | region table 1 ("regi", CRC-32C over 64 KiB)
 *   256 KiB | 64 KiB | region table 2 (an identical copy)
 *
 * Everything else (log, BAT, metadata region, blocks) lives at 1 MiB multiples.
 */

import { u64, viewOf } from '../../core/bytes.js';
import { corrupt } from '../../core/errors.js';
import { crcWithHole } from './crc32c.js';
import { type Guid, guid, guidEqual } from './guid.js';

export const MiB = 1 << 20;
export const KiB = 1024;
export const HEADER_OFFSETS = [64 * KiB, 128 * KiB] as const;
export const HEADER_SIZE = 4 * KiB;
export const REGION_OFFSETS = [192 * KiB, 256 * KiB] as const;
export const REGION_SIZE = 64 * KiB;
export const MAX_REGION_ENTRIES = 2047;

export const SIG_FILE = 'vhdxfile';
const SIG_HEAD = 0x64616568; // "head"
const SIG_REGI = 0x69676572; // "regi"

export const BAT_GUID = guid('2DC27766-F623-4200-9D64-115E9BFD4A08');
export const METADATA_GUID = guid('8B7CA206-4790-4B9A-B8FE-575F050F886E');

export interface Header {
  sequence: bigint;
  fileWriteGuid: Guid;
  dataWriteGuid: Guid;
  logGuid: Guid;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
}

/** Parses a 4 KiB header; undefined if its signature, checksum or version is wrong. */
export function parseHeader(buf: Uint8Array, file: string): Header | undefined {
  const v = viewOf(buf);
  if (v.getUint32(0, true) !== SIG_HEAD) return undefined;
  if (v.getUint32(4, true) !== crcWithHole(buf.subarray(0, HEADER_SIZE), 4)) return undefined;
  const version = v.getUint16(66, true);
  if (version !== 1) return undefined;
  return {
    sequence: v.getBigUint64(8, true),
    fileWriteGuid: buf.slice(16, 32),
    dataWriteGuid: buf.slice(32, 48),
    logGuid: buf.slice(48, 64),
    logVersion: v.getUint16(64, true),
    version,
    logLength: v.getUint32(68, true),
    logOffset: u64(v, 72, true, 'header log offset', file),
  };
}

export function serializeHeader(h: Header): Uint8Array {
  const buf = new Uint8Array(HEADER_SIZE);
  const v = viewOf(buf);
  v.setUint32(0, SIG_HEAD, true);
  v.setBigUint64(8, h.sequence, true);
  buf.set(h.fileWriteGuid, 16);
  buf.set(h.dataWriteGuid, 32);
  buf.set(h.logGuid, 48);
  v.setUint16(64, h.logVersion, true);
  v.setUint16(66, h.version, true);
  v.setUint32(68, h.logLength, true);
  v.setBigUint64(72, BigInt(h.logOffset), true);
  v.setUint32(4, crcWithHole(buf, 4), true);
  return buf;
}

export interface RegionEntry {
  guid: Guid;
  offset: number;
  length: number;
  required: boolean;
}

/** Parses a 64 KiB region table; undefined when its signature or checksum is wrong. */
export function parseRegionTable(buf: Uint8Array, file: string): RegionEntry[] | undefined {
  const v = viewOf(buf);
  if (v.getUint32(0, true) !== SIG_REGI) return undefined;
  if (v.getUint32(4, true) !== crcWithHole(buf.subarray(0, REGION_SIZE), 4)) return undefined;
  const count = v.getUint32(8, true);
  if (count > MAX_REGION_ENTRIES) {
    throw corrupt(file, `region table entry count ${count} is above the limit ${MAX_REGION_ENTRIES}`);
  }
  const out: RegionEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = 16 + i * 32;
    out.push({
      guid: buf.slice(at, at + 16),
      offset: u64(v, at + 16, true, `region table entry ${i} file offset`, file),
      length: v.getUint32(at + 24, true),
      required: (v.getUint32(at + 28, true) & 1) === 1,
    });
  }
  return out;
}

export function serializeRegionTable(entries: readonly RegionEntry[]): Uint8Array {
  const buf = new Uint8Array(REGION_SIZE);
  const v = viewOf(buf);
  v.setUint32(0, SIG_REGI, true);
  v.setUint32(8, entries.length, true);
  entries.forEach((e, i) => {
    const at = 16 + i * 32;
    buf.set(e.guid, at);
    v.setBigUint64(at + 16, BigInt(e.offset), true);
    v.setUint32(at + 24, e.length, true);
    v.setUint32(at + 28, e.required ? 1 : 0, true);
  });
  v.setUint32(4, crcWithHole(buf, 4), true);
  return buf;
}

export function findRegion(entries: readonly RegionEntry[], g: Guid): RegionEntry | undefined {
  return entries.find((e) => guidEqual(e.guid, g));
}

/** The 64 KiB file type identifier with a UTF-16LE creator string. */
export function serializeFileIdentifier(creator: string): Uint8Array {
  const buf = new Uint8Array(64 * KiB);
  buf.set(new TextEncoder().encode(SIG_FILE), 0);
  const c = creator.slice(0, 255);
  for (let i = 0; i < c.length; i++) {
    buf[8 + i * 2] = c.charCodeAt(i) & 0xff;
    buf[9 + i * 2] = c.charCodeAt(i) >> 8;
  }
  return buf;
}

export function parseCreator(buf: Uint8Array): string {
  let s = '';
  for (let i = 8; i + 1 < Math.min(buf.length, 8 + 512); i += 2) {
    const ch = buf[i] | (buf[i + 1] << 8);
    if (ch === 0) break;
    s += String.fromCharCode(ch);
  }
  return s;
}
