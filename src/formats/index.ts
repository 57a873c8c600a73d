/**
 * The registered format drivers, in probe order. raw is last: it accepts
 * anything, so it is only chosen when no other driver recognises the image.
 * A new format adds its folder and one line here.
 */
import { PlatterError } from '../core/errors.js';
import type { FormatDriver } from './driver.js';
import { ewf } from './ewf/index.js';
import { qcow2 } from './qcow2/index.js';
import { raw } from './raw/index.js';
import { vdi } from './vdi/index.js';
import { vhd } from './vhd/index.js';
import { vhdx } from './vhdx/index.js';
import { vmdk } from './vmdk/index.js';

export const drivers: readonly FormatDriver[] = [
  // formats with a magic number go here, before raw
  qcow2,
  ewf,
  vhdx,
  vhd,
  vmdk,
  vdi,
  raw,
];

/** Other names for a format: qemu-img's (it calls VHD "vpc"). */
const ALIASES: Record<string, string> = { vpc: 'vhd' };

export function byName(name: string): FormatDriver {
  const d = drivers.find((x) => x.name === (ALIASES[name] ?? name));
  if (!d) {
    throw new PlatterError(
      'EINVAL',
      `unknown format '${name}' (known: ${drivers.map((x) => x.name).join(', ')})`,
    );
  }
  return d;
}
