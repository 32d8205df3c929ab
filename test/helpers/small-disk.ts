// A small data disk for the full-disk scenarios (issue 17 item 5): a tmpfs of a given size mounted
// on a fresh temporary folder. Needs root (CI runs as root). Unmounted lazily, so that a process
// still holding a file there does not leave the mount behind, and removed, even after a failure.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, statfsSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

export const isRoot = process.getuid?.() === 0

export interface SmallDisk {
  /** Where it is mounted. */
  readonly path: string
  /** Bytes free on it now. */
  free(): number
  /** Unmount and remove it (safe to call when mounting failed halfway). */
  unmount(): void
}

/** Mount a tmpfs of `size` (e.g. '12m') on a new folder named after `what`. */
export function mountSmallDisk(size: string, what: string): SmallDisk {
  const mountPoint = mkdtempSync(path.join(os.tmpdir(), `iothub-edge-${what}-`))
  let mounted = false
  const disk: SmallDisk = {
    path: mountPoint,
    free: () => {
      const s = statfsSync(mountPoint)
      return s.bavail * s.bsize
    },
    unmount: () => {
      if (mounted) execFileSync('umount', ['-l', mountPoint])
      mounted = false
      rmSync(mountPoint, { recursive: true, force: true })
    },
  }
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mountPoint])
    mounted = true
  } catch (err) {
    disk.unmount()
    throw err
  }
  return disk
}
