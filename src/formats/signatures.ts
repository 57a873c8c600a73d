/**
 * Signatures of image formats, so that probing never takes one silently for raw
 * (a fixed VHD's footer is at the end of the file, not the start).
 */
import type { Storage } from '../core/storage.js';

const AT_START: ReadonlyArray<[string, Uint8Array, number]> = [
  ['qcow2', Uint8Array.from([0x51, 0x46, 0x49, 0xfb]), 0],
  ['vmdk', new TextEncoder().encode('KDMV'), 0],
  ['vmdk', new TextEncoder().encode('# Disk DescriptorFile'), 0],
  ['vhdx', new TextEncoder().encode('vhdxfile'), 0],
  ['vhd', new TextEncoder().encode('conectix'), 0],
  ['vdi', Uint8Array.from([0x7f, 0x10, 0xda, 0xbe]), 0x40],
  ['ewf', Uint8Array.from([0x45, 0x56, 0x46, 0x09, 0x0d, 0x0a, 0xff, 0x00]), 0],
  // Formats platter does not open, so that they are never silently read as raw.
  ['vmdk (ESX COWD)', new TextEncoder().encode('COWD'), 0],
  ['ewf2 (Ex01)', Uint8Array.from([0x45, 0x56, 0x46, 0x32, 0x0d, 0x0a, 0x81, 0x00]), 0],
  ['ewf logical (L01)', Uint8Array.from([0x4c, 0x56, 0x46, 0x09, 0x0d, 0x0a, 0xff, 0x00]), 0],
  ['qed', Uint8Array.from([0x51, 0x45, 0x44, 0x00]), 0],
  ['luks', Uint8Array.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]), 0],
  ['parallels', new TextEncoder().encode('WithoutFreeSpace'), 0],
  ['parallels', new TextEncoder().encode('WithouFreSpacExt'), 0],
];

export async function knownSignature(storage: Storage): Promise<string | undefined> {
  const size = await storage.size();
  const head = new Uint8Array(Math.min(size, 512));
  if (head.length > 0) await storage.read(head, 0);
  for (const [name, magic, at] of AT_START) {
    if (head.length >= at + magic.length && magic.every((b, i) => head[at + i] === b)) return name;
  }
  // VHD fixed: 512-byte footer (older writers: 511) at the end starting with "conectix".
  for (const tail of [512, 511]) {
    if (size < tail) continue;
    const t = new Uint8Array(8);
    await storage.read(t, size - tail);
    if (new TextDecoder().decode(t) === 'conectix') return 'vhd';
  }
  return undefined;
}
