/**
 * A picture of a rescue map, like ddrescueview: a grid of cells, each standing
 * for an equal share of the domain, coloured by the worst status inside it
 * (bad > non-scraped > non-trimmed > non-tried > finished). Returns PNG bytes
 * (8-bit RGB, one IDAT, zlib from node:zlib via the injected deflate).
 */
import type { BlockStatus, RescueMap } from './mapfile.js';

export const STATUS_COLOURS: Record<BlockStatus, [number, number, number]> = {
  '+': [0x2e, 0xb8, 0x2e], // finished: green
  '?': [0x70, 0x70, 0x70], // non-tried: grey
  '*': [0xf0, 0xc0, 0x20], // non-trimmed: yellow
  '/': [0x30, 0x70, 0xe0], // non-scraped: blue
  '-': [0xd0, 0x20, 0x20], // bad sector: red
};
const RANK: Record<BlockStatus, number> = { '+': 0, '?': 1, '*': 2, '/': 3, '-': 4 };

export interface MapPictureOptions {
  columns?: number;
  rows?: number;
  cell?: number;
  deflate: (data: Uint8Array) => Uint8Array;
  crc32: (data: Uint8Array, initial?: number) => number;
}

/** Status of each cell (row-major). */
export function cellStatuses(map: RescueMap, cells: number): BlockStatus[] {
  const out: BlockStatus[] = new Array(cells).fill('+');
  const span = map.end - map.start;
  if (span <= 0) return out;
  for (const b of map.blocks) {
    const first = Math.floor(((b.pos - map.start) * cells) / span);
    const last = Math.min(cells - 1, Math.floor(((b.pos + b.size - 1 - map.start) * cells) / span));
    for (let c = first; c <= last; c++) if (RANK[b.status] > RANK[out[c]]) out[c] = b.status;
  }
  return out;
}

export function mapPicture(map: RescueMap, o: MapPictureOptions): Uint8Array {
  const cols = o.columns ?? 64;
  const rows = o.rows ?? 32;
  const cell = o.cell ?? 10;
  const width = cols * cell;
  const height = rows * cell;
  const statuses = cellStatuses(map, cols * rows);
  const stride = width * 3 + 1;
  const raw = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    raw[y * stride] = 0; // filter: none
    for (let x = 0; x < width; x++) {
      const edge = x % cell === cell - 1 || y % cell === cell - 1;
      const [r, g, b] = edge
        ? [0x20, 0x20, 0x20]
        : STATUS_COLOURS[statuses[Math.floor(y / cell) * cols + Math.floor(x / cell)]];
      const at = y * stride + 1 + x * 3;
      raw[at] = r;
      raw[at + 1] = g;
      raw[at + 2] = b;
    }
  }
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  const chunks = [
    chunk('IHDR', ihdr, o),
    chunk('IDAT', o.deflate(raw), o),
    chunk('IEND', new Uint8Array(0), o),
  ];
  const sig = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const total = sig.length + chunks.reduce((n, c) => n + c.length, 0);
  const png = new Uint8Array(total);
  let at = 0;
  for (const part of [sig, ...chunks]) {
    png.set(part, at);
    at += part.length;
  }
  return png;
}

/** PNG chunk: length, type, data, CRC-32 over type+data (PNG spec section 5.3). */
function chunk(type: string, data: Uint8Array, o: MapPictureOptions): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  v.setUint32(8 + data.length, o.crc32(out.subarray(4, 8 + data.length)) >>> 0);
  return out;
}
