/**
 * Reads through the server's two paths over raw sockets: small reads (one data
 * chunk or one simple reply, the hot path of bulk readers like nbdcopy) and
 * large reads (split at holes into hole chunks), with simple and with
 * structured replies, many in flight, answered out of order; and disks whose
 * reads fail, where each failing request gets its error and the buffers and
 * the memory budget go back (a leak would stall the server once the budget is spent).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, writeFileSync, writeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { stack } from '../../src/core/chain.js';
import { type Disk, toDisk } from '../../src/core/disk.js';
import { PlatterError } from '../../src/core/errors.js';
import { zeroDisk } from '../../src/core/zeros.js';
import { openImage } from '../../src/formats/open.js';
import { cow } from '../../src/layers/cow.js';
import * as P from '../../src/nbd/protocol.js';
import { SocketReader } from '../../src/nbd/stream.js';
import { nodeHost } from '../../src/storage/host.js';
import { native } from '../../src/storage/native.js';
import { needPeers, run } from '../helpers/peers.js';
import { socketPair } from '../helpers/sockets.js';
import { tempDir } from '../helpers/tmp.js';
import { serveDisk } from './helpers.js';

const KiB = 1024;
const MiB = 1 << 20;
const SIZE = 16 * MiB;

interface Reply {
  cookie: bigint;
  errno: number;
  message: string;
  /** Bytes of the requested range as the reply described them (data and hole chunks). */
  data: Buffer;
  holeChunks: number;
  dataChunks: number;
}

/** A minimal NBD client on a raw socket: many requests in flight, replies in any order. */
class Raw {
  private readonly reader: SocketReader;
  private structured = false;
  private readonly pending = new Map<bigint, { offset: number; length: number }>();
  private nextCookie = 1n;

  private constructor(private readonly socket: Socket) {
    this.reader = new SocketReader(socket);
    socket.on('error', () => undefined);
  }

  static async open(uri: string, structured: boolean): Promise<Raw> {
    const path = decodeURIComponent(new URL(uri).searchParams.get('socket')!);
    const s = connect(path);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const r = new Raw(s);
    await r.handshake(structured);
    return r;
  }

  private async handshake(structured: boolean): Promise<void> {
    const g = await this.reader.read(18);
    assert.equal(g.readBigUInt64BE(0), P.NBDMAGIC);
    this.socket.write(u32(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES));
    if (structured) {
      this.socket.write(P.optionRequest(P.OPT_STRUCTURED_REPLY));
      assert.equal((await this.optionReply()).type, P.REP_ACK);
      this.structured = true;
    }
    this.socket.write(P.optionRequest(P.OPT_GO, Buffer.concat([u32(0), Buffer.alloc(2)])));
    for (;;) {
      const r = await this.optionReply();
      if (r.type === P.REP_ACK) return;
      assert.ok(r.type < 0x80000000, `GO refused: ${r.type.toString(16)}`);
    }
  }

  private async optionReply(): Promise<{ type: number }> {
    const h = await this.reader.read(20);
    assert.equal(h.readBigUInt64BE(0), P.OPT_REPLY_MAGIC);
    await this.reader.read(h.readUInt32BE(16));
    return { type: h.readUInt32BE(12) };
  }

  /** Sends a READ; returns its cookie. */
  read(offset: number, length: number, flags = 0): bigint {
    const cookie = this.nextCookie++;
    this.pending.set(cookie, { offset, length });
    this.socket.write(P.encodeRequest({ flags, type: P.CMD_READ, cookie, offset, length }));
    return cookie;
  }

  /** The next whole reply (all chunks of one request, for structured replies). */
  async reply(): Promise<Reply> {
    if (!this.structured) {
      const h = await this.reader.read(16);
      assert.equal(h.readUInt32BE(0), P.SIMPLE_REPLY_MAGIC);
      const errno = h.readUInt32BE(4);
      const cookie = h.readBigUInt64BE(8);
      const req = this.pending.get(cookie);
      assert.ok(req, `reply to an unknown cookie ${cookie}`);
      this.pending.delete(cookie);
      const data = errno === 0 ? Buffer.from(await this.reader.read(req.length)) : Buffer.alloc(0);
      return { cookie, errno, message: '', data, holeChunks: 0, dataChunks: errno === 0 ? 1 : 0 };
    }
    // Chunks of different requests may interleave; collect until one request is done.
    for (;;) {
      const h = await this.reader.read(20);
      assert.equal(h.readUInt32BE(0), P.STRUCTURED_REPLY_MAGIC);
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const cookie = h.readBigUInt64BE(8);
      const payload = Buffer.from(await this.reader.read(h.readUInt32BE(16)));
      const req = this.pending.get(cookie);
      assert.ok(req, `reply to an unknown cookie ${cookie}`);
      const acc = (this.partial.get(cookie) ?? {
        cookie,
        errno: 0,
        message: '',
        data: Buffer.alloc(req.length, 0xee),
        holeChunks: 0,
        dataChunks: 0,
      }) as Reply;
      this.partial.set(cookie, acc);
      if (type === P.REPLY_TYPE_OFFSET_DATA) {
        const off = Number(payload.readBigUInt64BE(0));
        payload.copy(acc.data, off - req.offset, 8);
        acc.dataChunks++;
      } else if (type === P.REPLY_TYPE_OFFSET_HOLE) {
        const off = Number(payload.readBigUInt64BE(0));
        acc.data.fill(0, off - req.offset, off - req.offset + payload.readUInt32BE(8));
        acc.holeChunks++;
      } else if (type & 0x8000) {
        acc.errno = payload.readUInt32BE(0);
        acc.message = payload.subarray(6, 6 + payload.readUInt16BE(4)).toString();
      } else assert.equal(type, P.REPLY_TYPE_NONE);
      if (flags & P.REPLY_FLAG_DONE) {
        this.partial.delete(cookie);
        this.pending.delete(cookie);
        return acc;
      }
    }
  }
  private readonly partial = new Map<bigint, Reply>();

  /** Sends all reads (at most `window` in flight); the replies in the order of the reads. */
  async readAll(
    reads: Array<{ offset: number; length: number; flags?: number }>,
    window = 64,
  ): Promise<Array<{ offset: number; length: number; reply: Reply }>> {
    const out: Array<{ offset: number; length: number; reply: Reply }> = [];
    const byCookie = new Map<bigint, number>();
    let sent = 0;
    let received = 0;
    while (received < reads.length) {
      while (sent < reads.length && sent - received < window) {
        const r = reads[sent];
        byCookie.set(this.read(r.offset, r.length, r.flags ?? 0), sent++);
      }
      const reply = await this.reply();
      const i = byCookie.get(reply.cookie)!;
      out[i] = { offset: reads[i].offset, length: reads[i].length, reply };
      received++;
    }
    return out;
  }

  close(): void {
    this.socket.destroy();
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** A memory disk: random data everywhere but a hole at 8-10 MiB. */
async function memoryDisk(): Promise<{ disk: Disk; content: Buffer }> {
  const disk = stack(toDisk(cow(SIZE), { name: 'mem', readOnly: false }), zeroDisk(SIZE));
  const content = randomBytes(SIZE);
  content.fill(0, 8 * MiB, 10 * MiB);
  await disk.write(content.subarray(0, 8 * MiB), 0);
  await disk.write(content.subarray(10 * MiB), 10 * MiB);
  return { disk, content };
}

/** A disk whose reads touching [badStart, badEnd) fail with `error()`. */
function failingDisk(content: Buffer, badStart: number, badEnd: number, error: () => Error): Disk {
  return toDisk(
    {
      size: content.length,
      async read(buf, offset) {
        if (offset < badEnd && offset + buf.length > badStart) throw error();
        buf.set(content.subarray(offset, offset + buf.length));
      },
    },
    { name: 'failing', readOnly: true },
  );
}

/** Bulk-reader requests: `count` adjacent reads of `size` bytes from `start`. */
function sequential(start: number, count: number, size: number): Array<{ offset: number; length: number }> {
  return Array.from({ length: count }, (_, i) => ({ offset: start + i * size, length: size }));
}

describe('nbd server: reads', () => {
  const dir = tempDir();

  it('SocketReader.readNow takes only bytes already buffered, across chunks, else nothing', async () => {
    const { server, client } = await socketPair(dir, 'reader.sock');
    const r = new SocketReader(server);
    try {
      assert.equal(r.readNow(1), null);
      client.write(Buffer.from('abc'));
      assert.deepEqual(await r.read(1), Buffer.from('a'));
      assert.equal(r.readNow(3), null, 'only 2 bytes buffered');
      client.write(Buffer.from('defg'));
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(r.readNow(4), Buffer.from('bcde'), 'spans two chunks');
      assert.equal(r.readNow(3), null);
      assert.deepEqual(r.readNow(2), Buffer.from('fg'));
      assert.equal(r.readNow(1), null);
      client.end();
      await assert.rejects(r.read(1), /closed/);
    } finally {
      client.destroy();
      server.destroy();
    }
  });

  for (const structured of [false, true]) {
    const mode = structured ? 'structured replies' : 'simple replies';

    it(`${mode}: 64 bulk reads in flight and odd sizes return the image's bytes`, async () => {
      const { disk, content } = await memoryDisk();
      const s = await serveDisk(disk, dir);
      const c = await Raw.open(s.uri, structured);
      try {
        const reads = [
          ...sequential(0, SIZE / (256 * KiB), 256 * KiB),
          { offset: 0, length: 1 },
          { offset: SIZE - 1, length: 1 },
          { offset: 12345, length: 256 * KiB },
          { offset: 777, length: 256 * KiB - 1 },
          { offset: 3 * MiB + 5, length: 256 * KiB + 1 },
          { offset: 7 * MiB, length: 4 * MiB },
          { offset: SIZE - 3 * MiB, length: 3 * MiB },
        ];
        for (const r of await c.readAll(reads)) {
          assert.equal(r.reply.errno, 0, `read ${r.offset}+${r.length}: ${r.reply.message}`);
          assert.ok(
            r.reply.data.equals(content.subarray(r.offset, r.offset + r.length)),
            `bytes of ${r.offset}+${r.length}`,
          );
          if (r.length <= 256 * KiB) assert.equal(r.reply.dataChunks, 1, 'a small read is one piece');
        }
      } finally {
        c.close();
        await s.stop();
        await disk.close();
      }
    });

    it(`${mode}: a failing disk answers each read that touches the bad range with EIO`, async () => {
      const content = randomBytes(SIZE);
      const disk = failingDisk(content, 4 * MiB, 5 * MiB, () => new PlatterError('EIO', 'bad sector'));
      const logs: string[] = [];
      const s = await serveDisk(disk, dir, { log: (m) => logs.push(m) });
      const c = await Raw.open(s.uri, structured);
      try {
        // 4 MiB of reads around the bad MiB, then 128 MiB of failing small reads (twice the
        // server's buffer budget: a read that failed and kept its share would stall it).
        const reads = [
          ...sequential(3 * MiB, 12, 256 * KiB),
          { offset: 4 * MiB - 1, length: 2 },
          { offset: 2 * MiB, length: 4 * MiB },
          ...Array.from({ length: 512 }, (_, i) => ({
            offset: 4 * MiB + (i % 4) * 256 * KiB,
            length: 256 * KiB,
          })),
          ...sequential(6 * MiB, 8, 256 * KiB),
        ];
        const results = await c.readAll(reads);
        assert.equal(results.length, reads.length);
        for (const r of results) {
          const bad = r.offset < 5 * MiB && r.offset + r.length > 4 * MiB;
          if (bad) {
            assert.equal(r.reply.errno, P.EIO, `read ${r.offset}+${r.length} fails`);
            if (structured) assert.match(r.reply.message, /bad sector/);
          } else {
            assert.equal(r.reply.errno, 0, `read ${r.offset}+${r.length}: ${r.reply.message}`);
            assert.ok(r.reply.data.equals(content.subarray(r.offset, r.offset + r.length)));
          }
        }
        assert.deepEqual(
          logs.filter((m) => /internal error/.test(m)),
          [],
          'a PlatterError is no internal error',
        );
      } finally {
        c.close();
        await s.stop();
      }
    });
  }

  it('a bug in the disk (not a PlatterError) is EIO to the client and logged as an internal error', async () => {
    const content = randomBytes(SIZE);
    const disk = failingDisk(content, 0, 64 * KiB, () => new TypeError('oops'));
    const logs: string[] = [];
    const s = await serveDisk(disk, dir, { log: (m) => logs.push(m) });
    const c = await Raw.open(s.uri, true);
    try {
      const [small, large, fine] = await c.readAll([
        { offset: 0, length: 4 * KiB },
        { offset: 0, length: MiB },
        { offset: MiB, length: 256 * KiB },
      ]);
      assert.equal(small.reply.errno, P.EIO);
      assert.equal(large.reply.errno, P.EIO);
      assert.equal(fine.reply.errno, 0);
      assert.ok(fine.reply.data.equals(content.subarray(MiB, MiB + 256 * KiB)));
      assert.equal(logs.filter((m) => /internal error serving a request: TypeError: oops/.test(m)).length, 2);
    } finally {
      c.close();
      await s.stop();
    }
  });

  it('structured: a large read over a hole has hole chunks, a small one is one data chunk of zeros', async () => {
    const { disk, content } = await memoryDisk();
    const s = await serveDisk(disk, dir);
    const c = await Raw.open(s.uri, true);
    try {
      const [big, small, df] = await c.readAll([
        { offset: 7 * MiB, length: 4 * MiB },
        { offset: 8 * MiB, length: 256 * KiB },
        { offset: 7 * MiB, length: 4 * MiB, flags: P.CMD_FLAG_DF },
      ]);
      assert.equal(small.reply.holeChunks, 0);
      assert.equal(small.reply.dataChunks, 1);
      assert.ok(small.reply.data.equals(Buffer.alloc(256 * KiB)));
      assert.equal(big.reply.holeChunks, 1, 'the hole at 8-10 MiB is one hole chunk');
      assert.ok(big.reply.data.equals(content.subarray(7 * MiB, 11 * MiB)));
      assert.equal(df.reply.holeChunks, 0, "DF: don't fragment");
      assert.equal(df.reply.dataChunks, 1);
      assert.ok(df.reply.data.equals(content.subarray(7 * MiB, 11 * MiB)));
    } finally {
      c.close();
      await s.stop();
      await disk.close();
    }
  });
  describe('read-only exports of host files (replies sent from the files)', () => {
    const fileReads = [
      ...sequential(0, 8, 2 * MiB),
      { offset: 0, length: 1 },
      { offset: SIZE - 1, length: 1 },
      { offset: 777, length: 256 * KiB - 1 },
      { offset: 7 * MiB + 3, length: 4 * MiB },
      { offset: 8 * MiB, length: 2 * MiB },
    ];

    for (const structured of [false, true]) {
      it(`raw, ${structured ? 'structured' : 'simple'} replies: the file's bytes, holes as hole chunks`, async (t) => {
        if (!native.socket) return t.skip('no native addon');
        const path = join(dir, `sent-${structured}.raw`);
        const content = randomBytes(SIZE);
        content.fill(0, 8 * MiB, 10 * MiB);
        const fd = openSync(path, 'w');
        writeSync(fd, content.subarray(0, 8 * MiB), 0, 8 * MiB, 0);
        writeSync(fd, content.subarray(10 * MiB), 0, SIZE - 10 * MiB, 10 * MiB); // 8-10 MiB: a real hole
        closeSync(fd);
        const disk = await openImage(nodeHost, path, { format: 'raw', readOnly: true });
        const s = await serveDisk(disk, dir, { readOnly: true });
        const c = await Raw.open(s.uri, structured);
        try {
          for (const r of await c.readAll(fileReads)) {
            assert.equal(r.reply.errno, 0, `read ${r.offset}+${r.length}: ${r.reply.message}`);
            assert.ok(
              r.reply.data.equals(content.subarray(r.offset, r.offset + r.length)),
              `${r.offset}+${r.length}`,
            );
            if (structured && r.offset === 8 * MiB)
              assert.equal(r.reply.holeChunks, 1, 'the hole is a hole chunk');
          }
          // Structured replies send the 2 MiB hole as a chunk in each of the three reads over it.
          const data = fileReads.reduce((n, r) => n + r.length, 0) - (structured ? 6 * MiB : 0);
          assert.equal(s.server.sentFromFiles, data, 'every data byte left from the file');
        } finally {
          c.close();
          await s.stop();
          await disk.close();
        }
      });
    }

    it('qcow2 with compressed clusters: data clusters from the file, the rest through memory', async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      if (!native.socket) return t.skip('no native addon');
      const raw = join(dir, 'half.raw');
      const q = join(dir, 'mixed.qcow2');
      const content = randomBytes(SIZE);
      // The first 8 MiB compress (a repeated KiB), so qemu-img stores them compressed.
      for (let p = KiB; p < 8 * MiB; p += KiB) content.copy(content, p, 0, KiB);
      content.fill(0, 8 * MiB, 10 * MiB);
      writeFileSync(raw, content.subarray(0, 8 * MiB));
      assert.equal(run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, q]).status, 0);
      assert.equal(run('qemu-img', ['resize', '-f', 'qcow2', q, String(SIZE)]).status, 0);
      writeFileSync(raw, content.subarray(10 * MiB));
      const w = run('qemu-io', ['-f', 'qcow2', '-c', `write -s ${raw} ${10 * MiB} ${SIZE - 10 * MiB}`, q]);
      assert.equal(w.status, 0, w.stderr);
      const disk = await openImage(nodeHost, q, { format: 'qcow2', readOnly: true });
      const s = await serveDisk(disk, dir, { readOnly: true });
      const c = await Raw.open(s.uri, true);
      try {
        for (const r of await c.readAll([...fileReads, ...sequential(0, 64, 256 * KiB)])) {
          assert.equal(r.reply.errno, 0, `read ${r.offset}+${r.length}: ${r.reply.message}`);
          assert.ok(
            r.reply.data.equals(content.subarray(r.offset, r.offset + r.length)),
            `${r.offset}+${r.length}`,
          );
        }
        // Reads wholly in the uncompressed [10, 16) MiB: three of 2 MiB, 24 of 256 KiB, the last byte.
        assert.equal(
          s.server.sentFromFiles,
          12 * MiB + 1,
          'only reads of uncompressed clusters left from the file',
        );
      } finally {
        c.close();
        await s.stop();
        await disk.close();
      }
    });

    it('a client that leaves with replies queued costs nothing: others are served, no descriptor is left', async (t) => {
      if (!native.socket) return t.skip('no native addon');
      const path = join(dir, 'leave.raw');
      const content = randomBytes(SIZE);
      writeFileSync(path, content);
      const fds = readdirSync('/proc/self/fd').length;
      const disk = await openImage(nodeHost, path, { format: 'raw', readOnly: true });
      const s = await serveDisk(disk, dir, { readOnly: true });
      try {
        for (let round = 0; round < 3; round++) {
          const quitter = await Raw.open(s.uri, true);
          for (let i = 0; i < 64; i++) quitter.read((i % 8) * 2 * MiB, 2 * MiB);
          await new Promise((r) => setTimeout(r, 20));
          quitter.close();
        }
        const c = await Raw.open(s.uri, false);
        const [r] = await c.readAll([{ offset: MiB, length: 4 * MiB }]);
        assert.ok(r.reply.data.equals(content.subarray(MiB, 5 * MiB)));
        c.close();
        for (let i = 0; i < 100 && s.server.clients > 0; i++) await new Promise((r) => setTimeout(r, 20));
        assert.equal(s.server.clients, 0, 'every session ended');
      } finally {
        await s.stop();
        await disk.close();
      }
      assert.equal(readdirSync('/proc/self/fd').length, fds, 'no descriptor left open');
    });
  });
});
