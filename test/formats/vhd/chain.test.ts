/**
 * Differencing VHDs: chains platter makes, read back by platter and by libvhdi
 * (vhdimount through FUSE). qemu-img 7.2 ignores a VHD's parent, so the oracle
 * for content is libvhdi and the model of the writes the test made.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isPlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import {
  CODE_MACX,
  CODE_W2KU,
  CODE_W2RU,
  encodeUtf16,
  parseHeader,
  serializeHeader,
} from '../../../src/formats/vhd/header.js';
import { nodeHost } from '../../../src/storage/host.js';
import { testDisk } from '../../conformance/disk.js';
import { hasPeer, must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { assertSame, openRo, qemuSize, qemuWrites, readAll } from './util.js';

const dir = tempDir('platter-vhd-chain-');
let n = 0;

testDisk('vhd differencing over an empty dynamic parent', async (size) => {
  const base = join(dir, `cbase-${n}.vhd`);
  const top = join(dir, `ctop-${n++}.vhd`);
  await createImage(nodeHost, base, { format: 'vhd', size });
  await createImage(nodeHost, top, { format: 'vhd', backing: { name: base.slice(dir.length + 1) } });
  const disk = await openImage(nodeHost, top, { readOnly: false });
  return { disk, reopen: () => openImage(nodeHost, top, { readOnly: true }) };
});

async function writeModel(path: string, model: Uint8Array, writes: Array<[number, number]>): Promise<void> {
  const d = await openImage(nodeHost, path, { readOnly: false });
  try {
    for (const [off, len] of writes) {
      const data = randomBytes(len);
      await d.write(data, off);
      model.set(data, off);
    }
  } finally {
    await d.close();
  }
}

/** The bytes libvhdi reads for the image (the last vhdiN of a vhdimount is the image itself). */
function vhdimountBytes(path: string): Uint8Array | undefined {
  if (!hasPeer('vhdimount') || !hasPeer('fusermount') || run('sh', ['-c', 'test -e /dev/fuse']).status !== 0)
    return;
  const mnt = join(dir, `mnt-${n++}`);
  mkdirSync(mnt);
  must('vhdimount', [path, mnt]);
  try {
    const names = readdirSync(mnt).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
    return new Uint8Array(readFileSync(join(mnt, names[names.length - 1])));
  } finally {
    run('fusermount', ['-u', mnt]);
  }
}

function patchHeader(
  path: string,
  fn: (h: ReturnType<typeof parseHeader>) => void,
  extra?: [Uint8Array, number],
): void {
  const buf = readFileSync(path);
  const h = parseHeader(buf.subarray(512, 1536), path);
  fn(h);
  const out = Buffer.from(buf);
  out.set(serializeHeader(h), 512);
  if (extra) out.set(extra[0], extra[1]);
  writeFileSync(path, out);
}

describe('vhd: differencing chains', () => {
  it('qemu-made base, two platter layers: platter and libvhdi read the model', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io', 'vhdiinfo')) return;
    const base = join(dir, 'base.vhd');
    must('qemu-img', ['create', '-q', '-f', 'vpc', base, '6M']);
    const size = qemuSize(base, 'vpc');
    const model = qemuWrites(base, 'vpc', size, [
      [0, 8192, 0x11],
      [3 * 1024 * 1024 + 17, 5000, 0x22],
      [size - 700, 700, 0x33],
    ]);
    const mid = join(dir, 'mid.vhd');
    const top = join(dir, 'top.vhd');
    await createImage(nodeHost, mid, { format: 'vhd', backing: { name: 'base.vhd' } });
    await writeModel(mid, model, [
      [100, 10],
      [2 * 1024 * 1024 - 3, 9],
      [4 * 1024 * 1024, 1 << 20],
    ]);
    await createImage(nodeHost, top, { format: 'vhd', backing: { name: 'mid.vhd' } });
    await writeModel(top, model, [
      [105, 1],
      [3 * 1024 * 1024 + 20, 512],
      [size - 1, 1],
    ]);
    const d = await openRo(top);
    try {
      assert.equal(d.layers.length, 3);
      assert.equal(d.size, size);
      assertSame(await readAll(d), model, 'platter reads the chain');
      const depths = new Set((await d.extents(0, d.size)).map((e) => e.depth));
      assert.ok(depths.has(0) && depths.has(1) && depths.has(2), 'extents come from every layer');
    } finally {
      await d.close();
    }
    const info = must('vhdiinfo', [top]);
    assert.match(info, /Differential/);
    const baseId = /Identifier\s*:\s*(\S+)/.exec(must('vhdiinfo', [mid]))?.[1];
    assert.match(info, new RegExp(`Parent identifier\\s*:\\s*${baseId}`));
    const lib = vhdimountBytes(top);
    if (lib) assertSame(lib, model, 'libvhdi (vhdimount) reads the chain');
    else t.diagnostic('vhdimount/FUSE unavailable: libvhdi byte check skipped');
  });

  for (const [kind, code, encode] of [
    [
      'Hyper-V style absolute W2ku',
      CODE_W2KU,
      (p: string) => encodeUtf16(`C:\\Hyper-V\\Virtual Hard Disks\\${p.slice(p.lastIndexOf('/') + 1)}`, true),
    ],
    ['relative W2ru into a subfolder', CODE_W2RU, () => encodeUtf16('.\\parent dir\\loc-base.vhd', true)],
    ['MacX file URL', CODE_MACX, (p: string) => new TextEncoder().encode(`file://localhost${encodeURI(p)}`)],
  ] as Array<[string, number, (p: string) => Uint8Array]>) {
    it(`finds a parent by a ${kind} locator alone`, async () => {
      mkdirSync(join(dir, 'parent dir'), { recursive: true });
      const base = join(dir, 'parent dir', 'loc-base.vhd');
      const child = join(dir, `loc-child-${code}.vhd`);
      await createImage(nodeHost, base, { format: 'vhd', size: 4 << 20, force: true });
      const model = new Uint8Array(4 << 20);
      await writeModel(base, model, [[0, 4096]]);
      await createImage(nodeHost, child, { format: 'vhd', backing: { name: 'parent dir/loc-base.vhd' } });
      const text = encode(code === CODE_W2KU ? 'parent dir/loc-base.vhd' : base);
      const at = readFileSync(child).length - 512;
      // Put the locator data where the footer was and the footer after it.
      const footer = Buffer.from(readFileSync(child).subarray(at));
      patchHeader(
        child,
        (h) => {
          h.parentName = 'C:\\nowhere\\unknown.vhd';
          for (const l of h.locators)
            Object.assign(l, { code: 0, dataSpace: 0, dataLength: 0, dataOffset: 0 });
          Object.assign(h.locators[0], { code, dataSpace: 512, dataLength: text.length, dataOffset: at });
        },
        [text, at],
      );
      const buf = readFileSync(child);
      const out = new Uint8Array(at + 1024);
      out.set(buf.subarray(0, at + 512));
      out.set(footer, at + 512);
      writeFileSync(child, out);
      if (code === CODE_W2KU) {
        // A Windows absolute path leads to the same name next to the child.
        writeFileSync(join(dir, 'loc-base.vhd'), readFileSync(base));
      }
      const d = await openRo(child);
      try {
        assertSame(await readAll(d), model, 'reads through the parent');
      } finally {
        await d.close();
      }
    });
  }

  it('parallel writes into one block of a differencing disk keep every sector bitmap bit', async (t) => {
    const base = join(dir, 'p-base.vhd');
    const child = join(dir, 'p-child.vhd');
    await createImage(nodeHost, base, { format: 'vhd', size: 4 << 20 });
    const model = new Uint8Array(4 << 20);
    await writeModel(base, model, [[0, 4 << 20]]);
    await createImage(nodeHost, child, { format: 'vhd', backing: { name: 'p-base.vhd' } });
    const d = await openImage(nodeHost, child, { readOnly: false });
    await Promise.all(
      [0, 3, 7, 8, 100, 511].map((i) => {
        const data = randomBytes(4096);
        model.set(data, i * 4096);
        return d.write(data, i * 4096);
      }),
    );
    await d.close();
    const r = await openRo(child);
    try {
      assertSame(await readAll(r), model, 'platter reads the child over its parent');
      const own = (await r.extents(0, r.size)).filter((e) => e.depth === 0).reduce((n, e) => n + e.length, 0);
      assert.equal(own, 6 * 4096, 'exactly the written units are in the child');
    } finally {
      await r.close();
    }
    const lib = vhdimountBytes(child);
    if (lib) assertSame(lib, model, 'libvhdi reads the same');
    else t.diagnostic('vhdimount/FUSE unavailable: libvhdi byte check skipped');
  });

  it('missing parent and parent UUID mismatch are clear errors; force=on reads anyway', async () => {
    const base = join(dir, 'm-base.vhd');
    const other = join(dir, 'm-other.vhd');
    const child = join(dir, 'm-child.vhd');
    await createImage(nodeHost, base, { format: 'vhd', size: 1 << 20 });
    await createImage(nodeHost, other, { format: 'vhd', size: 1 << 20 });
    await createImage(nodeHost, child, { format: 'vhd', backing: { name: 'm-base.vhd' } });
    renameSync(base, `${base}.away`);
    await assert.rejects(
      openRo(child),
      (e: unknown) => isPlatterError(e) && e.code === 'ENOENT' && /m-base\.vhd/.test(e.message),
    );
    renameSync(other, base);
    await assert.rejects(
      openRo(child),
      (e: unknown) => isPlatterError(e) && e.code === 'ECORRUPT' && /parent UUID mismatch/.test(e.message),
    );
    const forced = await openRo(child, { force: 'on' });
    assert.equal(forced.layers.length, 2);
    await forced.close();
  });

  it('setBacking (rebase -u) and makeEmpty (commit) at library level', async () => {
    const a = join(dir, 'r-a.vhd');
    const b = join(dir, 'r-b.vhd');
    const child = join(dir, 'r-child.vhd');
    await createImage(nodeHost, a, { format: 'vhd', size: 4 << 20 });
    const model = new Uint8Array(4 << 20);
    await writeModel(a, model, [[0, 4 << 20]]);
    await createImage(nodeHost, b, { format: 'vhd', size: 4 << 20 });
    // b gets the same content as a, under another UUID.
    {
      const db = await openImage(nodeHost, b, { readOnly: false });
      await db.write(model, 0);
      await db.close();
    }
    await createImage(nodeHost, child, { format: 'vhd', backing: { name: 'r-a.vhd' } });
    await writeModel(child, model, [[1000, 3000]]);
    const rw = await openImage(nodeHost, child, { readOnly: false, backing: false });
    await rw.features.setBacking!({ name: 'r-b.vhd', format: 'vhd' });
    await rw.close();
    let d = await openRo(child);
    assert.equal((await d.info()).backing?.name, 'r-b.vhd');
    assertSame(await readAll(d), model, 'after rebase -u');
    await d.close();
    assert.match(must('vhdiinfo', [child]), /r-b\.vhd/);

    // commit: copy the child's own extents into its parent, then empty the child.
    const chain = await openImage(nodeHost, child, { readOnly: false, forceShare: true });
    const parent = await openImage(nodeHost, b, { readOnly: false, forceShare: true });
    for (const e of await chain.extents(0, chain.size)) {
      if (e.depth !== 0 || e.status !== 'data') continue;
      const buf = new Uint8Array(e.length);
      await chain.read(buf, e.offset);
      await parent.write(buf, e.offset);
    }
    await parent.close();
    await chain.features.makeEmpty!();
    await chain.close();
    d = await openRo(child);
    assertSame(await readAll(d), model, 'after commit');
    assert.ok(
      (await d.extents(0, d.size)).every((e) => e.depth >= 1),
      'the child is empty',
    );
    await d.close();
  });

  it('rebase to nothing turns a differencing disk into a dynamic one', async () => {
    const base = join(dir, 'n-base.vhd');
    const child = join(dir, 'n-child.vhd');
    await createImage(nodeHost, base, { format: 'vhd', size: 1 << 20 });
    await createImage(nodeHost, child, { format: 'vhd', backing: { name: 'n-base.vhd' } });
    const d = await openImage(nodeHost, child, { readOnly: false, backing: false });
    await d.features.setBacking!(null);
    await d.close();
    const again = await openRo(child);
    assert.equal((await again.info()).subformat, 'dynamic');
    assert.equal(again.layers.length, 1);
    await again.close();
  });

  it('a differencing VHD needs a VHD parent', async () => {
    const raw = join(dir, 'raw-parent.img');
    await createImage(nodeHost, raw, { format: 'raw', size: 1 << 20 });
    await assert.rejects(
      createImage(nodeHost, join(dir, 'on-raw.vhd'), {
        format: 'vhd',
        backing: { name: 'raw-parent.img', format: 'raw' },
      }),
      (e: unknown) => isPlatterError(e) && e.code === 'EUNSUPPORTED',
    );
  });
});
