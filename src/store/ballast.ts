// A reserved file on the data disk (decision 0015-wal-full-disk): space the gateway can give back to
// itself when its own database and WAL have filled the disk. A full disk leaves SQLite no room to
// checkpoint the WAL or to commit the deletions the hub's PUBACKs trigger, so without it the outbox
// could never shrink again. Made at start and again after a recovery, when the disk has room for it.
import { closeSync, existsSync, fsyncSync, openSync, rmSync, statfsSync, statSync, writeSync } from 'node:fs'
import path from 'node:path'
import { freeBytes } from './db.js'

export const BALLAST_FILE = 'store.ballast'
const MIN_BYTES = 512 * 1024
const MAX_BYTES = 8 * 1024 * 1024
const CHUNK = 64 * 1024

export class Ballast {
  readonly file: string

  constructor(dataDir: string) {
    this.file = path.join(dataDir, BALLAST_FILE)
  }

  /** 5 % of the filesystem, between 512 KiB and 8 MiB. */
  get bytes(): number {
    const s = statfsSync(path.dirname(this.file))
    return Math.min(MAX_BYTES, Math.max(MIN_BYTES, Math.floor((s.blocks * s.bsize) / 20)))
  }

  /**
   * The WAL may grow to half the ballast before it is checkpointed: a checkpoint on a full disk
   * then always fits into the space the ballast gives back (it writes the WAL's new pages into the
   * database file). SQLite's default, 1000 pages, on a filesystem of 160 MiB or more.
   */
  walPages(pageSize: number): number {
    return Math.max(16, Math.min(1000, Math.floor(this.bytes / pageSize / 2)))
  }

  get present(): boolean {
    return existsSync(this.file)
  }

  /** Make the file if it is missing and the disk keeps `headroom` bytes free after it; true if it is there. */
  ensure(headroom: number): boolean {
    try {
      if (this.present && statSync(this.file).size >= this.bytes) return true
      const size = this.bytes
      if (freeBytes(path.dirname(this.file)) < size + headroom) return false
      // Written, not sparse: the blocks must really be taken, to be really given back.
      const fd = openSync(this.file, 'w', 0o600)
      try {
        const zeros = Buffer.alloc(CHUNK)
        for (let done = 0; done < size; done += CHUNK) writeSync(fd, zeros, 0, Math.min(CHUNK, size - done))
        fsyncSync(fd)
      } finally {
        closeSync(fd)
      }
      return true
    } catch {
      rmSync(this.file, { force: true })
      return false
    }
  }

  /** Give the space back; returns the bytes released (0 when there was no ballast). */
  release(): number {
    try {
      const size = statSync(this.file).size
      rmSync(this.file, { force: true })
      return size
    } catch {
      return 0
    }
  }
}
