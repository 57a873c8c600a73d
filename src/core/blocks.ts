/**
 * Cutting a byte range at block boundaries: every block-mapped format (a VHD
 * block, a VDI block, a qcow2 cluster, a VMDK grain) serves a read or write
 * one block at a time.
 */

/** The part of a byte range that lies in one block. */
export interface BlockPiece {
  /** Block number (offset ÷ block size). */
  block: number;
  /** Byte offset of the piece inside its block. */
  within: number;
  /** Byte offset of the piece inside the range (0 for the first piece). */
  at: number;
  /** Bytes in the piece (1 ... blockSize). */
  length: number;
}

/**
 * Does the piece cover its whole block, or all of it that lies in a disk of
 * `diskSize` bytes (the last block)? A write of such a piece leaves nothing of
 * the block to take from elsewhere (a parent, old content).
 */
export function coversBlock(p: BlockPiece, blockSize: number, diskSize: number): boolean {
  return p.within === 0 && (p.length === blockSize || p.block * blockSize + p.length === diskSize);
}

/** The pieces of [offset, offset + length) cut at multiples of blockSize, in order. */
export function* blockPieces(offset: number, length: number, blockSize: number): Generator<BlockPiece> {
  for (let at = 0; at < length; ) {
    const pos = offset + at;
    const block = Math.floor(pos / blockSize);
    const within = pos - block * blockSize;
    const n = Math.min(blockSize - within, length - at);
    yield { block, within, at, length: n };
    at += n;
  }
}

/**
 * Runs `fn` on every block piece of `buf` (which holds [offset, offset +
 * buf.length)) at once, with the piece's own view of `buf`, and waits for all.
 */
export async function eachBlockPiece(
  buf: Uint8Array,
  offset: number,
  blockSize: number,
  fn: (piece: Uint8Array, block: number, within: number) => Promise<void> | void,
): Promise<void> {
  const jobs: Array<Promise<void> | void> = [];
  for (const p of blockPieces(offset, buf.length, blockSize)) {
    jobs.push(fn(buf.subarray(p.at, p.at + p.length), p.block, p.within));
  }
  await Promise.all(jobs);
}
