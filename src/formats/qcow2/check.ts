/**
 * check and repair, with qemu-img's meanings: every host cluster's refcount
 * must equal the number of references found by walking the header, the
 * refcount structure, the active and every snapshot's L1/L2 tables, and the
 * snapshot table. Fewer references than the refcount = leak; more =
 * corruption (a write could free a cluster still in use). Bit 63 ("copied")
 * of active entries must match "refcount is 1".
 *
 * Repair: `leaks` lowers leaked refcounts; `all` also rebuilds the whole
 * refcount structure past the end of the file (as qemu does) when any
 * refcount is too low or the structure itself is broken, and fixes bit 63.
 */
import type { CheckResult } from '../../core/disk.js';
import { isPlatterError, PlatterError } from '../../core/errors.js';
import { decodeCompressed } from './compressed.js';
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY } from './header.js';
import type { Qcow2Image } from './image.js';
import { Refcounts } from './refcounts.js';
import { readSnapshots, refreshCopiedFlags, snapshotTableBytes } from './snapshots.js';
import { COPIED_HI, decodeL2, offsetOf, readHiLo } from './tables.js';

type Repair = 'none' | 'leaks' | 'all';

interface Scan {
  expected: Uint32Array;
  corruptions: number;
  messages: string[];
  /** Problems of the refcount structure itself (repair: rebuild). */
  structureBroken: boolean;
  /** Clusters of the refcount table and blocks (excluded when rebuilding). */
  refcountClusters: number[];
  copiedErrors: number;
  allocated: number;
}

const MAX_MESSAGES = 100;

export async function checkImage(img: Qcow2Image, repair: Repair): Promise<CheckResult> {
  return img.lock.run(() => checkLocked(img, repair));
}

async function checkLocked(img: Qcow2Image, repair: Repair): Promise<CheckResult> {
  const first = await scan(img);
  const before = await compare(img, first);
  if (repair === 'none' || (before.corruptions === 0 && before.leaks === 0)) {
    if (repair === 'all' && img.h.incompatible & (INCOMPAT_CORRUPT | INCOMPAT_DIRTY)) await clearFlags(img);
    return plain(before);
  }
  await img.beginChange();
  const needRebuild = repair === 'all' && (first.structureBroken || before.low > 0);
  if (needRebuild) {
    await rebuild(img, first);
  } else {
    for (const [c, want] of before.leaked) await img.refcounts.modify(c, 1, () => want);
  }
  if (repair === 'all') await refreshCopiedFlags(img);
  img.dropCaches();
  const after = await compare(img, await scan(img));
  if (repair === 'all' && after.corruptions === 0) await clearFlags(img);
  return {
    ...plain(after),
    repaired: {
      corruptions: Math.max(0, before.corruptions - after.corruptions),
      leaks: Math.max(0, before.leaks - after.leaks),
    },
  };
}

/** The public result, without the internal bookkeeping. */
function plain(c: Comparison): CheckResult {
  return { corruptions: c.corruptions, leaks: c.leaks, messages: c.messages, details: c.details };
}

async function clearFlags(img: Qcow2Image): Promise<void> {
  img.h.incompatible &= ~(INCOMPAT_CORRUPT | INCOMPAT_DIRTY);
  await img.writeHeader();
  await img.storage.flush();
}

async function scan(img: Qcow2Image): Promise<Scan> {
  const cs = img.cs;
  const nClusters = Math.ceil(img.fileSize / cs);
  const s: Scan = {
    expected: new Uint32Array(nClusters),
    corruptions: 0,
    messages: [],
    structureBroken: false,
    refcountClusters: [],
    copiedErrors: 0,
    allocated: 0,
  };
  const say = (m: string): void => {
    if (s.messages.length < MAX_MESSAGES) s.messages.push(m);
  };
  const ref = (offset: number, length: number, what: string): boolean => {
    if (offset + length > nClusters * cs) {
      s.corruptions++;
      say(`ERROR ${what} at 0x${offset.toString(16)} is past end of file (size ${img.fileSize})`);
      return false;
    }
    for (let c = Math.floor(offset / cs); c < Math.ceil((offset + length) / cs); c++) s.expected[c]++;
    return true;
  };
  ref(0, cs, 'header');

  const walk = async (l1: Uint8Array, active: boolean, label: string): Promise<void> => {
    for (let i = 0; i < l1.length / 8; i++) {
      const [hi, lo] = readHiLo(l1, i);
      const l2off = offsetOf(hi, lo);
      if (l2off === 0) continue;
      if (l2off % cs !== 0) {
        s.corruptions++;
        say(`ERROR ${label} L2 table offset 0x${l2off.toString(16)} (L1 entry ${i}) is not cluster aligned`);
        continue;
      }
      if (!ref(l2off, cs, `${label} L2 table`)) continue;
      const table = await img.loadL2(l2off);
      for (let k = 0; k < img.l2Entries; k++) {
        const [ehi, elo] = readHiLo(table, img.l2Index(k));
        try {
          const e = decodeL2(ehi, elo, img.zeroFlag, cs, img.file);
          if (e.kind === 'compressed') {
            const c = decodeCompressed(ehi, elo, img.clusterBits, img.file);
            ref(c.sectorStart, c.sectorEnd - c.sectorStart, `${label} compressed cluster`);
            if (active) s.allocated++;
          } else if (e.offset !== 0) {
            if (ref(e.offset, cs, `${label} data cluster`) && active && e.kind === 'data') s.allocated++;
          }
        } catch (err) {
          if (!isPlatterError(err)) throw err;
          s.corruptions++;
          say(`ERROR ${label} L2 entry ${k} of table 0x${l2off.toString(16)}: ${err.message}`);
        }
      }
    }
  };

  if (img.h.l1Size > 0) ref(img.h.l1Offset, img.h.l1Size * 8, 'active L1 table');
  await walk(img.l1, true, 'active');

  try {
    const snaps = await readSnapshots(img);
    if (snaps.length > 0) ref(img.h.snapshotsOffset, snapshotTableBytes(snaps).length, 'snapshot table');
    for (const sn of snaps) {
      if (sn.l1Size === 0) continue;
      if (!ref(sn.l1Offset, sn.l1Size * 8, `snapshot ${sn.id} L1 table`)) continue;
      const l1 = new Uint8Array(sn.l1Size * 8);
      await img.storage.read(l1, sn.l1Offset);
      await walk(l1, false, `snapshot ${sn.id}`);
    }
  } catch (err) {
    if (!isPlatterError(err)) throw err;
    s.corruptions++;
    say(`ERROR snapshot table: ${err.message}`);
  }

  await refBitmaps(img, ref, s, say);

  // The refcount structure itself.
  const rt = img.refcounts;
  ref(rt.tableOffset, rt.table.length, 'refcount table');
  for (let c = rt.tableOffset / cs; c < (rt.tableOffset + rt.table.length) / cs; c++)
    s.refcountClusters.push(c);
  for (let ti = 0; ti < rt.tableEntries; ti++) {
    const [hi, lo] = readHiLo(rt.table, ti);
    const off = offsetOf(hi, lo);
    if (off === 0 && (lo & 0x1ff) === 0) continue;
    if (off % cs !== 0 || (lo & 0x1ff) !== 0 || hi >= 2 ** 21) {
      s.corruptions++;
      s.structureBroken = true;
      say(`ERROR refcount block ${ti} offset 0x${off.toString(16)} is not cluster aligned`);
      continue;
    }
    if (!ref(off, cs, `refcount block ${ti}`)) {
      s.structureBroken = true;
      continue;
    }
    s.refcountClusters.push(off / cs);
  }

  // Bit 63 of active entries.
  for (let i = 0; i < img.h.l1Size; i++) {
    const [hi, lo] = readHiLo(img.l1, i);
    const l2off = offsetOf(hi, lo);
    if (l2off === 0 || l2off % cs !== 0 || l2off + cs > img.fileSize) continue;
    const rc = await safeRefcount(img, l2off / cs);
    if (rc !== undefined && ((hi & COPIED_HI) !== 0) !== (rc === 1)) {
      s.copiedErrors++;
      say(
        `ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} refcount=${rc}`,
      );
    }
    const table = await img.loadL2(l2off);
    for (let k = 0; k < img.l2Entries; k++) {
      const [ehi, elo] = readHiLo(table, img.l2Index(k));
      if (ehi & 0x40000000) continue;
      const off = offsetOf(ehi, elo);
      if (off === 0 || off % cs !== 0 || off + cs > nClusters * cs) continue;
      const drc = await safeRefcount(img, off / cs);
      if (drc !== undefined && ((ehi & COPIED_HI) !== 0) !== (drc === 1)) {
        s.copiedErrors++;
        say(
          `ERROR OFLAG_COPIED data cluster: l2_entry=0x${ehi.toString(16)}${elo.toString(16).padStart(8, '0')} refcount=${drc}`,
        );
      }
    }
  }
  return s;
}

async function safeRefcount(img: Qcow2Image, c: number): Promise<number | undefined> {
  try {
    return await img.refcounts.get(c);
  } catch (e) {
    if (isPlatterError(e)) return undefined;
    throw e;
  }
}

/** Counts the clusters of persistent dirty bitmaps (directory, tables, data). */
async function refBitmaps(
  img: Qcow2Image,
  ref: (o: number, l: number, w: string) => boolean,
  s: Scan,
  say: (m: string) => void,
): Promise<void> {
  const { ranges, error } = await img.bitmapRanges();
  for (const [offset, length, what] of ranges) ref(offset, length, what);
  if (error) {
    s.corruptions++;
    say(`ERROR ${error}`);
  }
}

interface Comparison extends CheckResult {
  low: number;
  leaked: Array<[number, number]>;
}

async function compare(img: Qcow2Image, s: Scan): Promise<Comparison> {
  const out: Comparison = {
    corruptions: s.corruptions + s.copiedErrors,
    leaks: 0,
    messages: s.messages,
    low: 0,
    leaked: [],
  };
  const say = (m: string): void => {
    if (out.messages.length < MAX_MESSAGES) out.messages.push(m);
  };
  const rt = img.refcounts;
  const n = s.expected.length;
  // Clusters the refcounts cover: everything in the file, and whatever blocks describe past it.
  const covered = Math.max(n, rt.tableEntries * rt.perBlock);
  let highest = -1; // the last cluster in use, by either count (qemu-img's "Image end offset")
  for (let ti = 0; ti * rt.perBlock < covered; ti++) {
    let block: Uint8Array | undefined;
    try {
      block = await rt.block(ti);
    } catch (e) {
      if (!isPlatterError(e)) throw e;
      block = undefined;
    }
    const startC = ti * rt.perBlock;
    const endC = Math.min(startC + rt.perBlock, block ? covered : n);
    for (let c = startC; c < endC; c++) {
      const stored = block ? rt.entry(block, c - startC) : 0;
      const want = c < n ? s.expected[c] : 0;
      if (stored > 0 || want > 0) highest = c;
      if (stored === want) continue;
      if (stored < want) {
        out.corruptions++;
        out.low++;
        say(`ERROR cluster ${c} refcount=${stored} reference=${want}`);
      } else {
        out.leaks++;
        out.leaked.push([c, want]);
        if (c < n) say(`Leaked cluster ${c} refcount=${stored} reference=${want}`);
      }
    }
  }
  out.details = {
    allocatedClusters: s.allocated,
    totalClusters: Math.ceil(img.size / img.cs),
    imageEndOffset: (highest + 1) * img.cs,
  };
  return out;
}

/**
 * Writes a complete new refcount structure after the end of the file, from
 * the references found, then points the header at it. The old table and
 * blocks become free space.
 */
async function rebuild(img: Qcow2Image, s: Scan): Promise<void> {
  const cs = img.cs;
  const per = img.refcounts.perBlock;
  const expected = s.expected;
  for (const c of s.refcountClusters) if (c < expected.length && expected[c] > 0) expected[c]--;
  const base = expected.length;
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = base + blocks + tableClusters;
    const b = Math.ceil(total / per);
    const t = Math.ceil((b * 8) / cs);
    if (b === blocks && t === tableClusters) break;
    blocks = b;
    tableClusters = t;
  }
  if (tableClusters * cs > 8 << 20)
    throw new PlatterError('EUNSUPPORTED', `${img.file}: refcount table would be too large to rebuild`);
  const total = base + blocks + tableClusters;
  const counts = new Uint32Array(total);
  counts.set(expected);
  for (let c = base; c < total; c++) counts[c] = 1;
  const table = new Uint8Array(tableClusters * cs);
  const tv = new DataView(table.buffer);
  const writer = new Refcounts(img, table, (base + blocks) * cs);
  for (let ti = 0; ti < blocks; ti++) {
    const blk = new Uint8Array(cs);
    for (let i = 0; i < per && ti * per + i < total; i++) {
      const v = counts[ti * per + i];
      if (v) setEntry(blk, i, writer.bits, v);
    }
    const off = (base + ti) * cs;
    await img.writeHost(blk, off);
    tv.setBigUint64(ti * 8, BigInt(off));
  }
  await img.writeHost(table, (base + blocks) * cs);
  await img.storage.flush();
  img.h.refcountTableOffset = (base + blocks) * cs;
  img.h.refcountTableClusters = tableClusters;
  await img.writeHeader();
  await img.storage.flush();
  img.refcounts = new Refcounts(img, table, (base + blocks) * cs);
}

function setEntry(b: Uint8Array, i: number, bits: number, value: number): void {
  if (bits < 8) {
    const max = (1 << bits) - 1;
    b[(i * bits) >> 3] |= Math.min(value, max) << ((i * bits) & 7);
    return;
  }
  const bytes = bits / 8;
  let v = value;
  for (let k = bytes - 1; k >= 0 && v > 0; k--) {
    b[i * bytes + k] = v % 256;
    v = Math.floor(v / 256);
  }
}
