// The device registry's list: read once per synchronous run of code (at start and on each hub
// connection several parts want it in the same turn; docs/performance.md "memory per registered
// device"), so every write through the registry must show in the next list() of the same turn.
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openDatabase, type Db } from '../../src/store/db.js'
import { DeviceRegistry } from '../../src/store/devices.js'

let dir: string
let db: Db
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'device-registry-'))
  db = openDatabase(dir)
})
afterEach(() => {
  db.close()
  rmSync(dir, { recursive: true, force: true })
})

const a = { productId: 'meter', deviceId: 'a' }
const b = { productId: 'meter', deviceId: 'b' }
const brief = (r: DeviceRegistry) => r.list().map((d) => `${d.deviceId}:${d.enabled ? 'on' : 'off'}:${d.tags.join('+')}:${d.hasSecret ? 'secret' : 'none'}`)

describe('device registry list', () => {
  it('shows every write through the registry in the same turn, and whether a device has a secret', async () => {
    const registry = new DeviceRegistry(db, dir, false)
    await registry.seed([{ ...a, tags: [], enabled: true }])
    expect(brief(registry)).toEqual(['a:on::none'])

    // One synchronous run: each list() after a write sees it.
    registry.setEnabled(a, false)
    expect(brief(registry)).toEqual(['a:off::none'])
    registry.editTags(a, ['floor1'])
    expect(brief(registry)).toEqual(['a:off:floor1:none'])
    registry.setTags(a, ['floor2'], 9)
    expect(brief(registry)).toEqual(['a:off:floor2:none'])

    await registry.add({ ...b, secret: 'b-secret' })
    const before = registry.list()
    expect(brief(registry)).toEqual(['a:off:floor2:none', 'b:on::secret'])
    registry.remove(a)
    expect(brief(registry)).toEqual(['b:on::secret'])
    // What an earlier caller got is not changed under it.
    expect(before.map((d) => d.deviceId)).toEqual(['a', 'b'])
    // No secret material in the list.
    expect(JSON.stringify(registry.list())).not.toMatch(/scrypt|secret_/)
  })
})
