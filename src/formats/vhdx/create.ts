/**
 * Creating a VHDX file. Layout (all at 1 MiB multiples):
 *
 *   0       header section (identifier, 2 headers, 2 region tables)
 *   1 MiB   log (log_size, default 1 MiB)
 *   +log    metadata region (1 MiB)
 *   +1 MiB  BAT (entries * 8 rounded up to 1 MiB)
 *   then    payload blocks (fixed: all of them, in order)
 *
 * Options (qemu-img spelling where it has one): subformat=dynamic|fixed,
 * block_size=, log_size=, block_state_zero=on|off, logical_sector_size=512|4096,
 * physical_sector_size=512|4096, preallocation=off|metadata|falloc|full (full:
 * fixed and dense), dense=on (write every byte: Hyper-V and WSL refuse sparse
 * host files).
 */
import { posix } from 'node:path';
import { alignUp, parseSize } from '../../core/bytes.js';
import { invalid, PlatterError, unsupported } from '../../core/errors.js';
import { writeZerosTo } from '../../core/storage.js';
import type { CreateContext } from '../driver.js';
import {
  Bat,
  bitmapIndex,
  FULLY_PRESENT,
  geometry,
  NOT_PRESENT,
  payloadIndex,
  SB_PRESENT,
  ZERO,
} from './bat.js';
import { guid, guidText, newGuid } from './guid.js';
import {
  BAT_GUID,
  HEADER_OFFSETS,
  METADATA_GUID,
  MiB,
  REGION_OFFSETS,
  serializeFileIdentifier,
  serializeHeader,
  serializeRegionTable,
} from './layout.js';
import { type Metadata, type ParentLocator, serializeMetadata, VHDX_LOCATOR_TYPE } from './metadata.js';

const KNOWN = [
  'subformat',
  'block_size',
  'log_size',
  'block_state_zero',
  'logical_sector_size',
  'physical_sector_size',
  'preallocation',
  'dense',
];

function onOff(v: string | undefined, key: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (['on', 'true', 'yes', '1'].includes(v)) return true;
  if (['off', 'false', 'no', '0'].includes(v)) return false;
  throw invalid(`vhdx: option ${key} must be on or off (got '${v}')`);
}

/** Default block size by disk size, as Hyper-V chooses: 32 MiB, 2 MiB for differencing disks. */
function defaultBlockSize(hasParent: boolean): number {
  return hasParent ? 2 * MiB : 32 * MiB;
}

/** Locator paths for a parent named `name` as given, seen from the child at `child`. */
export function locatorPaths(
  child: string,
  name: string,
  resolved: string,
): { relative: string; absolute: string } {
  const rel = posix.isAbsolute(name) ? posix.relative(posix.dirname(child), name) : name;
  const abs = posix.isAbsolute(resolved) ? resolved : posix.resolve(resolved);
  return {
    relative: rel.replaceAll('/', '\\'),
    absolute: `\\\\?\\${abs.replace(/^\/+/, '').replaceAll('/', '\\')}`,
  };
}

export function parentLocator(dataWriteGuid: string, relative: string, absolute: string): ParentLocator {
  return {
    type: VHDX_LOCATOR_TYPE,
    entries: new Map([
      ['parent_linkage', `{${dataWriteGuid.toLowerCase()}}`],
      ['relative_path', relative],
      ['absolute_win32_path', absolute],
    ]),
  };
}

export async function createVhdx(ctx: CreateContext): Promise<void> {
  const o = ctx.options;
  for (const k of Object.keys(o)) {
    if (!KNOWN.includes(k)) throw invalid(`vhdx: unknown option '${k}' (known: ${KNOWN.join(', ')})`);
  }
  const prealloc = o.preallocation ?? 'off';
  if (!['off', 'metadata', 'falloc', 'full'].includes(prealloc)) {
    throw invalid(`vhdx: preallocation must be off, metadata, falloc or full (got '${prealloc}')`);
  }
  const sub = o.subformat ?? (prealloc === 'full' || prealloc === 'falloc' ? 'fixed' : 'dynamic');
  if (sub !== 'dynamic' && sub !== 'fixed')
    throw invalid(`vhdx: subformat must be dynamic or fixed (got '${sub}')`);
  const fixed = sub === 'fixed';
  const dense = onOff(o.dense, 'dense', prealloc === 'full');
  const hasParent = !!ctx.backing;
  if (hasParent && fixed) throw invalid('vhdx: a differencing disk cannot be fixed');

  let logical = o.logical_sector_size ? parseSize(o.logical_sector_size, 'logical_sector_size') : 512;
  const physical = o.physical_sector_size ? parseSize(o.physical_sector_size, 'physical_sector_size') : 4096;
  let parentGuid = '';
  if (ctx.backing) {
    if (ctx.backing.format !== 'vhdx') {
      throw unsupported(
        `vhdx: a differencing VHDX needs a VHDX parent (${ctx.backing.name} is ${ctx.backing.format})`,
      );
    }
    const d = (await ctx.backing.disk.info()).details ?? {};
    parentGuid = String(d.dataWriteGuid ?? '');
    const pl = Number(d.logicalSectorSize ?? 512);
    if (o.logical_sector_size && pl !== logical) {
      throw invalid(`vhdx: logical sector size ${logical} differs from the parent's ${pl}`);
    }
    logical = pl;
  }
  if (logical !== 512 && logical !== 4096)
    throw invalid(`vhdx: logical_sector_size must be 512 or 4096 (got ${logical})`);
  if (physical !== 512 && physical !== 4096)
    throw invalid(`vhdx: physical_sector_size must be 512 or 4096 (got ${physical})`);
  const blockSize = o.block_size ? parseSize(o.block_size, 'block_size') : defaultBlockSize(hasParent);
  if (blockSize < MiB || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0) {
    throw invalid(`vhdx: block_size must be a power of 2 from 1 MiB to 256 MiB (got ${blockSize})`);
  }
  const logSize = o.log_size ? parseSize(o.log_size, 'log_size') : MiB;
  if (logSize < MiB || logSize % MiB !== 0 || logSize > 256 * MiB) {
    throw invalid(`vhdx: log_size must be a multiple of 1 MiB from 1 MiB to 256 MiB (got ${logSize})`);
  }
  // Virtual Disk Size must be a multiple of the logical sector size (VHDX 1.0,
  // 3.5.2.2): a size between sectors is rounded up, as qemu-img does.
  const size = alignUp(ctx.size, logical);
  if (size > 64 * 2 ** 40) throw invalid('vhdx: size must be at most 64 TiB');
  const blockStateZero = onOff(o.block_state_zero, 'block_state_zero', false);

  let parent: ParentLocator | undefined;
  if (ctx.backing) {
    const resolved = ctx.host.resolve(ctx.storage.name, ctx.backing.name);
    const p = locatorPaths(ctx.storage.name, ctx.backing.name, resolved);
    if (!parentGuid)
      throw new PlatterError('EINVAL', `vhdx: cannot read the DataWriteGuid of ${ctx.backing.name}`);
    parent = parentLocator(parentGuid, p.relative, p.absolute);
  }
  const md: Metadata = {
    blockSize,
    leaveBlockAllocated: fixed,
    hasParent,
    size,
    diskId: newGuid(),
    logicalSectorSize: logical,
    physicalSectorSize: physical,
    parent,
  };
  const g = geometry(size, blockSize, logical, hasParent);
  const logOffset = MiB;
  const metaOffset = logOffset + logSize;
  const batOffset = metaOffset + MiB;
  const batLength = Math.max(MiB, Math.ceil((g.entries * 8) / MiB) * MiB);
  const dataStart = batOffset + batLength;

  const bat = new Bat(new Uint8Array(g.entries * 8));
  for (let b = 0; b < g.dataBlocks; b++) {
    const i = payloadIndex(g, b);
    if (fixed) bat.set(i, FULLY_PRESENT, dataStart + b * blockSize);
    else bat.set(i, blockStateZero ? ZERO : NOT_PRESENT, 0);
  }
  // Differencing disks get their sector bitmap blocks now (zeros: every sector
  // from the parent). libvhdi reads a bitmap even for blocks whose bitmap entry
  // is NOT_PRESENT, so a missing one would be read from file offset 0.
  if (hasParent)
    for (let c = 0; c < g.bitmapBlocks; c++) bat.set(bitmapIndex(g, c), SB_PRESENT, dataStart + c * MiB);
  const end = fixed
    ? dataStart + g.dataBlocks * blockSize
    : hasParent
      ? dataStart + g.bitmapBlocks * MiB
      : dataStart;

  const s = ctx.storage;
  if (dense) await writeZerosTo(s, 0, end, 4 * MiB);
  else await s.truncate(end);
  await s.write(serializeFileIdentifier('platter'), 0);
  const fileWrite = newGuid();
  const dataWrite = newGuid();
  for (let k = 0; k < 2; k++) {
    const h = serializeHeader({
      sequence: BigInt(k + 1),
      fileWriteGuid: fileWrite,
      dataWriteGuid: dataWrite,
      logGuid: new Uint8Array(16),
      logVersion: 0,
      version: 1,
      logLength: logSize,
      logOffset,
    });
    await s.write(h, HEADER_OFFSETS[k]);
  }
  const table = serializeRegionTable([
    { guid: BAT_GUID, offset: batOffset, length: batLength, required: true },
    { guid: METADATA_GUID, offset: metaOffset, length: MiB, required: true },
  ]);
  for (const at of REGION_OFFSETS) await s.write(table, at);
  await s.write(serializeMetadata(md), metaOffset);
  await s.write(bat.bytes, batOffset);
}

/** For tests and info: the GUID text form used in parent_linkage. */
export const linkageOf = (g: Uint8Array): string => `{${guidText(g).toLowerCase()}}`;
export { guid };
