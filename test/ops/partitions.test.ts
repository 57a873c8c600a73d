import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Disk } from '../../src/core/disk.js';
import { PlatterError } from '../../src/core/errors.js';
import { openImage } from '../../src/formats/open.js';
import { crc32, type PartitionTable, readPartitionTable } from '../../src/ops/partitions.js';
import { nodeHost } from '../../src/storage/host.js';
import { must, needPeers } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { arrayDisk } from './toy.js';

const dir = tempDir();
let n = 0;

function mbrImage(script: string, size = '64M'): string {
  const p = join(dir, `mbr${n++}.raw`);
  must('truncate', ['-s', size, p]);
  must('sfdisk', ['-q', p], { input: script });
  return p;
}

function gptImage(args: string[], size = '64M'): string {
  const p = join(dir, `gpt${n++}.raw`);
  must('truncate', ['-s', size, p]);
  must('sgdisk', [...args, p]);
  return p;
}

async function tableOf(path: string): Promise<PartitionTable | undefined> {
  const d: Disk = await openImage(nodeHost, path, { readOnly: true, format: 'raw' });
  try {
    return await readPartitionTable(d);
  } finally {
    await d.close();
  }
}

interface SfdiskPart {
  node: string;
  start: number;
  size: number;
  type: string;
  uuid?: string;
  name?: string;
  bootable?: boolean;
}

function sfdiskJson(path: string): { label: string; id: string; partitions: SfdiskPart[] } {
  return JSON.parse(must('sfdisk', ['--json', path])).partitiontable;
}

/** mmls rows that are partitions (not Meta, not Unallocated): [start, length]. */
function mmlsRows(path: string): Array<[number, number]> {
  return must('mmls', [path])
    .split('\n')
    .filter((l) => /^\d{3}:\s+\d/.test(l))
    .map((l) => {
      const f = l.trim().split(/\s+/);
      return [Number(f[2]), Number(f[4])] as [number, number];
    });
}

const MBR_SCRIPT =
  'label: dos\nlabel-id: 0x12345678\nstart=2048, size=20480, type=83, bootable\nstart=22528, size=10240, type=82\n' +
  'start=32768, type=5\nstart=34816, size=4096, type=83\nstart=40960, size=2048, type=7\nstart=45056, size=1024, type=c\n';

describe('partition tables agree with sfdisk and mmls', () => {
  it('MBR with primary, extended and logical partitions (made by sfdisk)', async (t) => {
    if (!needPeers(t, 'sfdisk', 'mmls')) return;
    const p = mbrImage(MBR_SCRIPT);
    const got = (await tableOf(p))!;
    const want = sfdiskJson(p);
    assert.equal(got.scheme, 'mbr');
    assert.equal(`0x${got.id}`, want.id);
    assert.deepEqual(
      got.partitions.map((x) => ({
        n: x.index,
        start: x.start / 512,
        size: x.size / 512,
        type: x.type,
        boot: x.bootable,
      })),
      want.partitions.map((x) => ({
        n: Number(/(\d+)$/.exec(x.node)![1]),
        start: x.start,
        size: x.size,
        type: x.type,
        boot: !!x.bootable,
      })),
    );
    const rows = mmlsRows(p);
    const ours = got.partitions.filter((x) => x.type !== '5').map((x) => [x.start / 512, x.size / 512]);
    assert.deepEqual(ours, rows);
  });

  it('GPT with names and type GUIDs (made by sgdisk)', async (t) => {
    if (!needPeers(t, 'sgdisk', 'sfdisk', 'mmls')) return;
    const p = gptImage([
      '-n1:2048:+10M',
      '-t1:ef00',
      '-c1:EFI system',
      '-n2:0:+20M',
      '-t2:8300',
      '-c2:root',
      '-n3:0:0',
      '-t3:8200',
    ]);
    const got = (await tableOf(p))!;
    const want = sfdiskJson(p);
    assert.equal(got.scheme, 'gpt');
    assert.equal(got.id, want.id);
    assert.deepEqual(
      got.partitions.map((x) => ({
        start: x.start / 512,
        size: x.size / 512,
        type: x.type,
        uuid: x.guid,
        name: x.name,
      })),
      want.partitions.map((x) => ({
        start: x.start,
        size: x.size,
        type: x.type,
        uuid: x.uuid,
        name: x.name,
      })),
    );
    assert.equal(got.partitions[0].typeName, 'EFI System');
    assert.deepEqual(
      got.partitions.map((x) => [x.start / 512, x.size / 512]),
      mmlsRows(p),
    );
  });

  it('damaged primary GPT header: the backup is used, with a warning', async (t) => {
    if (!needPeers(t, 'sgdisk')) return;
    const p = gptImage(['-n1:2048:+1M', '-t1:8300', '-c1:data'], '8M');
    const fd = openSync(p, 'r+');
    writeSync(fd, Buffer.from('XX'), 0, 2, 512 + 60); // the disk GUID: inside the header's CRC range
    closeSync(fd);
    const got = (await tableOf(p))!;
    assert.equal(got.scheme, 'gpt');
    assert.equal(got.partitions[0].start, 2048 * 512);
    assert.ok(got.warnings?.some((w) => /backup/.test(w)));
  });
});

describe('partition tables: bad input', () => {
  it('no table: an empty disk and a disk without 0x55AA', async () => {
    assert.equal(await readPartitionTable(arrayDisk(new Uint8Array(4096))), undefined);
    assert.equal(await readPartitionTable(arrayDisk(new Uint8Array(100))), undefined);
  });

  it('an extended partition chain that loops ends with a warning', async () => {
    const b = new Uint8Array(1 << 20);
    const v = new DataView(b.buffer);
    b[510] = 0x55;
    b[511] = 0xaa;
    b[446 + 4] = 0x05;
    v.setUint32(446 + 8, 100, true);
    v.setUint32(446 + 12, 1000, true);
    // EBR at 100: a logical partition, and a link back to itself.
    const e = 100 * 512;
    b[e + 510] = 0x55;
    b[e + 511] = 0xaa;
    b[e + 446 + 4] = 0x83;
    v.setUint32(e + 446 + 8, 10, true);
    v.setUint32(e + 446 + 12, 20, true);
    b[e + 462 + 4] = 0x05;
    v.setUint32(e + 462 + 8, 0, true);
    const t1 = (await readPartitionTable(arrayDisk(b)))!;
    assert.equal(t1.partitions.length, 2, 'extended + one logical (a zero link ends the chain)');
    // Now EBR@100 -> EBR@300 -> EBR@300 again: a loop.
    v.setUint32(e + 462 + 8, 200, true);
    b.copyWithin(300 * 512, e, e + 512);
    const t2 = (await readPartitionTable(arrayDisk(b)))!;
    assert.equal(t2.partitions.length, 3);
    assert.ok(t2.warnings?.some((w) => /loops/.test(w)));
  });

  it('GPT with an absurd entry count is refused without a big allocation', async () => {
    const b = new Uint8Array(1 << 20);
    b[510] = 0x55;
    b[511] = 0xaa;
    b[446 + 4] = 0xee;
    new DataView(b.buffer).setUint32(446 + 8, 1, true);
    new DataView(b.buffer).setUint32(446 + 12, 2047, true);
    const h = b.subarray(512, 1024);
    h.set(new TextEncoder().encode('EFI PART'));
    const v = new DataView(h.buffer, h.byteOffset);
    v.setUint32(12, 92, true);
    v.setBigUint64(72, 2n, true);
    v.setUint32(80, 0xffffffff, true);
    v.setUint32(84, 128, true);
    v.setUint32(16, crc32(h.subarray(0, 92)), true);
    const t = await readPartitionTable(arrayDisk(b));
    // Falls back to reading the protective MBR as a table, with no crash.
    assert.equal(t?.scheme, 'mbr');
    assert.equal(t?.partitions[0].type, 'ee');
  });

  it('seeded mutations of a real GPT never throw anything but a PlatterError', async (t) => {
    if (!needPeers(t, 'sgdisk')) return;
    const p = gptImage(['-n1:2048:+1M', '-n2:0:+1M', '-c2:two'], '4M');
    const orig = readFileSync(p);
    let seed = 12345;
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    let parsed = 0;
    for (let i = 0; i < 300; i++) {
      const b = new Uint8Array(orig);
      for (let k = 0; k < 1 + (i % 8); k++) b[rnd() % (34 * 512)] = rnd() & 0xff;
      const tail = b.length - 33 * 512;
      if (i % 3 === 0) b.fill(0, 512, 1024); // kill the primary header: exercise the backup
      b[tail + (rnd() % (33 * 512))] = rnd() & 0xff;
      try {
        if ((await readPartitionTable(arrayDisk(b)))?.scheme === 'gpt') parsed++;
      } catch (e) {
        assert.ok(e instanceof PlatterError, `mutation ${i}: ${e}`);
      }
    }
    assert.ok(parsed > 0, 'some mutated images still parse (e.g. from the backup header)');
  });
});
