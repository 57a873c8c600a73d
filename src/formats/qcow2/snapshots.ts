/**
 * Internal snapshots (qcow2.txt, "Snapshots"). A snapshot is a saved copy of
 * the L1 table; everything reachable from it has its refcount raised, so the
 * active image copies on write (image.ts). The snapshot table is contiguous:
 *
 *   0-7   l1_table_offset   8-11 l1_size   12-13 id length   14-15 name length
 *   16-19 date (s)   20-23 date (ns)   24-31 vm clock (ns)   32-35 vm state size
 *   36-39 extra data size, then extra data (40-47 vm state size 64-bit,
 *   48-55 virtual disk size, 56-63 icount, more kept verbatim), id, name,
 *   padding to 8.
 *
 * Every change writes new metadata first and frees the old last. A
 * refcount of a data cluster counts the L1 tables that reach it.
 */
import type { DiskFeatures, SnapshotInfo } from '../../core/disk.js';
import { corrupt, invalid, PlatterError } from '../../core/errors.js';
import { decodeCompressed } from './compressed.js';
import { checkTable, MAX_L1_BYTES } from './header.js';
import type { Qcow2Image } from './image.js';
import { COPIED_HI, decodeL2, l2OffsetOf, readHiLo, writeHiLo } from './tables.js';

export interface Snapshot {
  l1Offset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClock: number;
  vmStateSize: number;
  diskSize: number;
  /** Extra data past the two fields platter knows, kept verbatim. */
  extraRest: Uint8Array;
}

const MAX_EXTRA = 1024;
const MAX_TABLE_BYTES = 64 << 20;
const text = new TextDecoder();
const enc = new TextEncoder();

/** Reads the snapshot table, checking every size against the file before allocating. */
export async function readSnapshots(img: Qcow2Image): Promise<Snapshot[]> {
  const h = img.h;
  const out: Snapshot[] = [];
  let at = h.snapshotsOffset;
  const file = img.file;
  for (let i = 0; i < h.nbSnapshots; i++) {
    if (at + 40 > img.fileSize || at - h.snapshotsOffset + 40 > MAX_TABLE_BYTES) {
      throw corrupt(
        file,
        `snapshot table entry ${i} at 0x${at.toString(16)} is past end of file (size ${img.fileSize})`,
      );
    }
    const fixed = new Uint8Array(40);
    await img.storage.read(fixed, at);
    const v = new DataView(fixed.buffer);
    const idLen = v.getUint16(12);
    const nameLen = v.getUint16(14);
    const extraLen = v.getUint32(36);
    if (extraLen > MAX_EXTRA)
      throw corrupt(file, `snapshot ${i} extra data size ${extraLen} exceeds ${MAX_EXTRA}`);
    const varLen = extraLen + idLen + nameLen;
    if (at + 40 + varLen > img.fileSize) {
      throw corrupt(
        file,
        `snapshot table entry ${i} (${40 + varLen} bytes at 0x${at.toString(16)}) is past end of file`,
      );
    }
    const rest = new Uint8Array(varLen);
    await img.storage.read(rest, at + 40);
    const ev = new DataView(rest.buffer);
    const l1Offset = Number(v.getBigUint64(0));
    const l1Size = v.getUint32(8);
    if (l1Size * 8 > MAX_L1_BYTES)
      throw corrupt(file, `snapshot ${i} l1_size ${l1Size} exceeds the limit of ${MAX_L1_BYTES / 8}`);
    checkTable(file, `snapshot ${i} L1 table`, l1Offset, l1Size * 8, img.cs, img.fileSize);
    const vmState32 = v.getUint32(32);
    const vmStateSize = extraLen >= 8 ? Number(ev.getBigUint64(0)) : vmState32;
    const diskSize = extraLen >= 16 ? Number(ev.getBigUint64(8)) : img.size;
    out.push({
      l1Offset,
      l1Size,
      id: text.decode(rest.subarray(extraLen, extraLen + idLen)),
      name: text.decode(rest.subarray(extraLen + idLen, varLen)),
      dateSec: v.getUint32(16),
      dateNsec: v.getUint32(20),
      vmClock: Number(v.getBigUint64(24)),
      vmStateSize: Number.isSafeInteger(vmStateSize) ? vmStateSize : 0,
      diskSize: Number.isSafeInteger(diskSize) ? diskSize : img.size,
      extraRest: rest.slice(Math.min(16, extraLen), extraLen),
    });
    at += Math.ceil((40 + varLen) / 8) * 8;
  }
  return out;
}

export function snapshotTableBytes(snaps: Snapshot[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const s of snaps) {
    const id = enc.encode(s.id);
    const name = enc.encode(s.name);
    const extraLen = 16 + s.extraRest.length;
    const len = Math.ceil((40 + extraLen + id.length + name.length) / 8) * 8;
    const b = new Uint8Array(len);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, BigInt(s.l1Offset));
    v.setUint32(8, s.l1Size);
    v.setUint16(12, id.length);
    v.setUint16(14, name.length);
    v.setUint32(16, s.dateSec);
    v.setUint32(20, s.dateNsec);
    v.setBigUint64(24, BigInt(s.vmClock));
    v.setUint32(32, Math.min(s.vmStateSize, 0xffffffff));
    v.setUint32(36, extraLen);
    v.setBigUint64(40, BigInt(s.vmStateSize));
    v.setBigUint64(48, BigInt(s.diskSize));
    b.set(s.extraRest, 56);
    b.set(id, 40 + extraLen);
    b.set(name, 40 + extraLen + id.length);
    parts.push(b);
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Adds `delta` to the refcount of every L2 table and cluster reachable from
 * an L1 table (batched per refcount block).
 */
export async function addTreeRefcounts(img: Qcow2Image, l1: Uint8Array, delta: number): Promise<void> {
  const deltas = new Map<number, number>();
  const bump = (c: number): void => {
    deltas.set(c, (deltas.get(c) ?? 0) + delta);
  };
  for (let i = 0; i < l1.length / 8; i++) {
    const [hi, lo] = readHiLo(l1, i);
    const l2off = l2OffsetOf(hi, lo, img.cs, img.fileSize, img.file, i);
    if (l2off === 0) continue;
    const table = await img.loadL2(l2off);
    for (let k = 0; k < img.l2Entries; k++) {
      const [ehi, elo] = readHiLo(table, img.l2Index(k));
      const e = decodeL2(ehi, elo, img.zeroFlag, img.cs, img.file);
      if (e.kind === 'compressed') {
        const c = decodeCompressed(ehi, elo, img.clusterBits, img.file);
        for (let x = Math.floor(c.sectorStart / img.cs); x < Math.ceil(c.sectorEnd / img.cs); x++) bump(x);
      } else if (e.offset !== 0) bump(e.offset / img.cs);
    }
    bump(l2off / img.cs);
  }
  const keys = [...deltas.keys()].sort((a, b) => a - b);
  for (let i = 0; i < keys.length; ) {
    let j = i + 1;
    while (j < keys.length && keys[j] === keys[j - 1] + 1) j++;
    await img.refcounts.modify(keys[i], j - i, (old, c) => old + deltas.get(c)!);
    i = j;
  }
}

/** Sets bit 63 in the active L1/L2 tables exactly where the refcount is 1. */
export async function refreshCopiedFlags(img: Qcow2Image): Promise<number> {
  let fixed = 0;
  for (let i = 0; i < img.h.l1Size; i++) {
    const [hi, lo] = readHiLo(img.l1, i);
    const l2off = l2OffsetOf(hi, lo, img.cs, img.fileSize, img.file, i);
    if (l2off === 0) continue;
    const l2rc = await img.refcounts.get(l2off / img.cs);
    const want = l2rc === 1;
    if (((hi & COPIED_HI) !== 0) !== want) {
      await img.writeL1Entry(i, want ? (hi | COPIED_HI) >>> 0 : (hi & ~COPIED_HI) >>> 0, lo);
      fixed++;
    }
    const table = await img.loadL2(l2off);
    let changed = false;
    for (let k = 0; k < img.l2Entries; k++) {
      const [ehi, elo] = readHiLo(table, img.l2Index(k));
      const e = decodeL2(ehi, elo, img.zeroFlag, img.cs, img.file);
      let wantCopied = false;
      if (e.kind !== 'compressed' && e.offset !== 0)
        wantCopied = (await img.refcounts.get(e.offset / img.cs)) === 1;
      if (e.kind === 'compressed' || (e.offset === 0 && !e.copied)) continue;
      if (e.copied !== wantCopied) {
        writeHiLo(
          table,
          img.l2Index(k),
          wantCopied ? (ehi | COPIED_HI) >>> 0 : (ehi & ~COPIED_HI) >>> 0,
          elo,
        );
        changed = true;
        fixed++;
      }
    }
    if (changed) await img.writeHost(table, l2off);
  }
  return fixed;
}

/** Writes a new snapshot table, points the header at it, frees the old one. */
async function replaceTable(img: Qcow2Image, snaps: Snapshot[]): Promise<void> {
  const h = img.h;
  const oldOffset = h.snapshotsOffset;
  const oldLen = h.nbSnapshots > 0 ? snapshotTableBytes(await readSnapshots(img)).length : 0;
  const bytes = snapshotTableBytes(snaps);
  let offset = 0;
  if (bytes.length > 0) {
    const n = Math.ceil(bytes.length / img.cs);
    offset = await img.allocClusters(n);
    const buf = new Uint8Array(n * img.cs);
    buf.set(bytes);
    await img.writeHost(buf, offset);
  }
  await img.storage.flush();
  h.snapshotsOffset = offset;
  h.nbSnapshots = snaps.length;
  await img.writeHeader();
  await img.storage.flush();
  if (oldLen > 0) await img.refcounts.addBytes(oldOffset, oldLen, -1);
}

/**
 * A snapshot by ID or name, in qemu-img's order: `snapshot -a` tries the ID
 * first, `snapshot -d` the name (qemu's -d takes only a name; an ID is the
 * fallback here).
 */
function find(snaps: Snapshot[], key: string, file: string, first: 'id' | 'name'): number {
  const byId = () => snaps.findIndex((s) => s.id === key);
  const byName = () => snaps.findIndex((s) => s.name === key);
  let i = first === 'id' ? byId() : byName();
  if (i < 0) i = first === 'id' ? byName() : byId();
  if (i < 0) throw new PlatterError('ENOENT', `${file}: no snapshot with the ID or name '${key}'`);
  return i;
}

async function readL1(img: Qcow2Image, offset: number, size: number): Promise<Uint8Array> {
  const l1 = new Uint8Array(size * 8);
  if (size > 0) await img.storage.read(l1, offset);
  return l1;
}

async function createSnapshot(img: Qcow2Image, name: string): Promise<void> {
  if (!name) throw invalid('snapshot name must not be empty');
  if (img.refcounts.maxRefcount < 2) {
    throw new PlatterError(
      'EUNSUPPORTED',
      `${img.file}: internal snapshots need refcount_bits of at least 2`,
    );
  }
  const snaps = await readSnapshots(img);
  if (snaps.some((s) => s.name === name))
    throw new PlatterError('EEXIST', `${img.file}: snapshot '${name}' already exists`);
  const id = String(snaps.reduce((m, s) => Math.max(m, Number(s.id) || 0), 0) + 1);
  await img.beginChange();
  // Order, so that a crash at any point leaves at most leaks and flags to
  // refresh, never a visible snapshot whose clusters the active image would
  // overwrite in place: raise the refcounts, clear the active tables' COPIED
  // flags (refcount now 2), write the copy of L1, and only then the snapshot
  // table and the header that make it visible.
  await addTreeRefcounts(img, img.l1, 1);
  await refreshCopiedFlags(img);
  const copy = img.l1.slice();
  for (let i = 0; i < img.h.l1Size; i++) {
    const [hi, lo] = readHiLo(copy, i);
    writeHiLo(copy, i, (hi & ~COPIED_HI) >>> 0, lo);
  }
  let l1Offset = 0;
  if (copy.length > 0) {
    const n = Math.ceil(copy.length / img.cs);
    l1Offset = await img.allocClusters(n);
    const buf = new Uint8Array(n * img.cs);
    buf.set(copy);
    await img.writeHost(buf, l1Offset);
  }
  const now = Date.now();
  snaps.push({
    l1Offset,
    l1Size: img.h.l1Size,
    id,
    name,
    dateSec: Math.floor(now / 1000),
    dateNsec: (now % 1000) * 1e6,
    vmClock: 0,
    vmStateSize: 0,
    diskSize: img.size,
    // Extra data bytes 16-23, icount (qcow2.txt): 0, as qemu-img snapshot -c writes it.
    extraRest: new Uint8Array(8),
  });
  await replaceTable(img, snaps);
}

async function applySnapshot(img: Qcow2Image, key: string): Promise<void> {
  const snaps = await readSnapshots(img);
  const s = snaps[find(snaps, key, img.file, 'id')];
  await img.beginChange();
  const snapL1 = await readL1(img, s.l1Offset, s.l1Size);
  // The active image will reference the snapshot's tree: raise it first.
  await addTreeRefcounts(img, snapL1, 1);
  const oldL1 = img.l1;
  const oldOffset = img.h.l1Offset;
  const oldSize = img.h.l1Size;
  const n = Math.ceil(snapL1.length / img.cs);
  let newOffset = 0;
  if (n > 0) {
    newOffset = await img.allocClusters(n);
    const buf = new Uint8Array(n * img.cs);
    buf.set(snapL1);
    await img.writeHost(buf, newOffset);
  }
  await img.storage.flush();
  img.h.l1Offset = newOffset;
  img.h.l1Size = s.l1Size;
  img.h.size = s.diskSize;
  img.l1 = snapL1.slice();
  await img.writeHeader();
  await img.storage.flush();
  await addTreeRefcounts(img, oldL1, -1);
  if (oldSize > 0) await img.refcounts.addBytes(oldOffset, oldSize * 8, -1);
  img.dropCaches();
  await refreshCopiedFlags(img);
}

async function deleteSnapshot(img: Qcow2Image, key: string): Promise<void> {
  const snaps = await readSnapshots(img);
  const i = find(snaps, key, img.file, 'name');
  const [s] = snaps.splice(i, 1);
  await img.beginChange();
  const l1 = await readL1(img, s.l1Offset, s.l1Size);
  await replaceTable(img, snaps);
  await addTreeRefcounts(img, l1, -1);
  if (s.l1Size > 0) await img.refcounts.addBytes(s.l1Offset, s.l1Size * 8, -1);
  img.dropCaches();
  await refreshCopiedFlags(img);
}

export function snapshotFeature(img: Qcow2Image): NonNullable<DiskFeatures['snapshots']> {
  const writing = async (fn: () => Promise<void>): Promise<void> => {
    if (img.readOnly) throw new PlatterError('EREADONLY', `${img.file}: image is open read-only`);
    img.checkWritable();
    await img.lock.run(fn);
  };
  return {
    async list(): Promise<SnapshotInfo[]> {
      return (await readSnapshots(img)).map((s) => ({
        id: s.id,
        name: s.name,
        vmStateSize: s.vmStateSize,
        date: s.dateSec,
        vmClock: s.vmClock,
        size: s.diskSize,
      }));
    },
    create: (name) => writing(() => createSnapshot(img, name)),
    apply: (name) => writing(() => applySnapshot(img, name)),
    delete: (name) => writing(() => deleteSnapshot(img, name)),
  };
}
