// The salvage of a damaged gateway.db, on files damaged by hand (src/store/salvage.ts): what the
// scenario test cannot aim at from outside. Two damaged leaves of the device registry: the rows
// between them are reached only by seeking the keys other tables name (a device lost is a device
// locked out); a damaged interior page of the outbox: the rows under the healthy pages after it
// are reached by probing ids.
import Database from 'better-sqlite3'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { DB_FILE, openDatabase } from '../../src/store/db.js'
import { openCheckedDatabase } from '../../src/store/salvage.js'

const DEVICES = 2_000
let dir: string

afterEach(() => rmSync(dir, { recursive: true, force: true }))

function fill(): void {
  dir = mkdtempSync(path.join(os.tmpdir(), 'iothub-edge-salvage-'))
  const db = openDatabase(dir)
  const dev = db.prepare("INSERT INTO devices (product_id, device_id, secret_hash, created_at, updated_at) VALUES ('meter', ?, 'scrypt$hash', 1, 1)")
  const up = db.prepare("INSERT INTO outbox (prio, device, kind, topic, payload, bytes, received_at) VALUES (2, ?, 'upload_data', ?, ?, 100, 1)")
  db.transaction(() => {
    for (let i = 0; i < DEVICES; i++) {
      const id = `d${String(i).padStart(4, '0')}`
      dev.run(id)
      up.run(`meter/${id}`, `upload_data/meter/${id}/t/m${i}`, Buffer.from('x'.repeat(60)))
    }
  })()
  db.close()
}

function pagesOf(name: string, type: string): number[] {
  const db = new Database(path.join(dir, DB_FILE), { readonly: true })
  try {
    return db.prepare('SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY path').pluck().all(name, type) as number[]
  } finally {
    db.close()
  }
}

function damage(page: number): void {
  const fd = openSync(path.join(dir, DB_FILE), 'r+')
  writeSync(fd, randomBytes(4096), 0, 4096, (page - 1) * 4096)
  closeSync(fd)
}

describe('salvage of a damaged gateway.db', () => {
  it('finds the devices between two damaged registry pages through the keys the outbox names', () => {
    fill()
    const leaves = pagesOf('devices', 'leaf')
    expect(leaves.length).toBeGreaterThan(6)
    damage(leaves[Math.floor(leaves.length / 3)])
    damage(leaves[Math.floor((2 * leaves.length) / 3)])
    const { db, salvage } = openCheckedDatabase(dir, 'quick_check')
    try {
      const devices = salvage!.tables.find((t) => t.table === 'devices')!
      const perPage = Math.ceil(DEVICES / leaves.length)
      expect(devices.rows).toBeGreaterThanOrEqual(DEVICES - 2 * perPage)
      expect(db.prepare("SELECT COUNT(*) FROM devices WHERE device_id = 'd1000'").pluck().get(), 'a device between the damaged pages').toBe(1)
      expect(salvage!.tables.find((t) => t.table === 'outbox')!.rows).toBe(DEVICES)
    } finally {
      db.close()
    }
  })

  it('reads past a damaged interior page of the outbox, ids and order kept', () => {
    fill()
    const interior = pagesOf('outbox', 'internal')
    if (interior.length < 2) {
      // one interior page is the root: damage a leaf instead, the same probing path
      damage(pagesOf('outbox', 'leaf')[5])
    } else {
      damage(interior[1])
    }
    const { db, salvage } = openCheckedDatabase(dir, 'quick_check')
    try {
      const outbox = salvage!.tables.find((t) => t.table === 'outbox')!
      expect(outbox.rows).toBeGreaterThan(0)
      expect(outbox.rows).toBeLessThan(DEVICES)
      expect(outbox.readErrors).toBeGreaterThan(0)
      // the last rows, behind the damage, are there with their ids
      expect(db.prepare('SELECT topic FROM outbox WHERE id = ?').pluck().get(DEVICES)).toBe(`upload_data/meter/d${DEVICES - 1}/t/m${DEVICES - 1}`)
      const ids = db.prepare('SELECT id FROM outbox ORDER BY id').pluck().all() as number[]
      const topics = db.prepare('SELECT topic FROM outbox ORDER BY id').pluck().all() as string[]
      ids.forEach((id, i) => expect(topics[i]).toBe(`upload_data/meter/d${String(id - 1).padStart(4, '0')}/t/m${id - 1}`))
    } finally {
      db.close()
    }
  })
})
