/** Reading and atomically replacing a mapfile through the Host (write MAPFILE.tmp, then rename). */
import { PlatterError } from '../../core/errors.js';
import type { Host } from '../../core/storage.js';
import { formatMapfile, type MapfileHeader, parseMapfile, type RescueMap } from './mapfile.js';

/** A mapfile larger than this is not a ddrescue mapfile (guards the allocation). */
const MAX_MAPFILE = 256 << 20;

export async function readMapfile(host: Host, path: string): Promise<RescueMap | undefined> {
  if (!(await host.exists(path))) return undefined;
  const s = await host.open(path, { write: false, lock: 'none' });
  try {
    const size = await s.size();
    if (size > MAX_MAPFILE)
      throw new PlatterError('EINVAL', `${path}: too large for a mapfile (${size} bytes)`);
    const buf = new Uint8Array(size);
    await s.read(buf, 0);
    const text = new TextDecoder().decode(buf);
    // An empty file (`touch MAPFILE`) starts a new rescue, as with GNU ddrescue.
    if (text.trim() === '') return undefined;
    return parseMapfile(text, path);
  } finally {
    await s.close();
  }
}

export async function writeMapfile(
  host: Host,
  path: string,
  map: RescueMap,
  header: MapfileHeader,
): Promise<void> {
  const tmp = `${path}.tmp`;
  const s = await host.create(tmp, { force: true, lock: 'none' });
  try {
    await s.write(new TextEncoder().encode(formatMapfile(map, header)), 0);
    await s.flush();
  } finally {
    await s.close();
  }
  await host.rename(tmp, path);
}
