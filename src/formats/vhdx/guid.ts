/**
 * GUIDs as VHDX stores them: Data1 (u32), Data2 (u16), Data3 (u16) little-endian,
 * then Data4 as 8 plain bytes. Text form: 8-4-4-4-12 hex digits.
 */
import { newUuid } from '../../core/random.js';

export type Guid = Uint8Array;

const ORDER = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

export function guid(text: string): Guid {
  const hex = text.replace(/[{}-]/g, '');
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new Error(`internal error: bad GUID text ${text}`);
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[ORDER[i]] = Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

export function guidText(g: Uint8Array): string {
  const h = ORDER.map((i) => g[i].toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A random (version 4) GUID. */
export function newGuid(): Guid {
  return newUuid('guid');
}

export function guidEqual(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function isZeroGuid(g: Uint8Array): boolean {
  return g.every((x) => x === 0);
}
