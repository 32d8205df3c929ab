// The device registry's list: read once per synchronous run of code (at start and on each hub
// connection several parts want it in the same turn; docs/performance.md "memory per registered
// device"), so every write through the registry must show in the next list() of the same turn.
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { openDatabase, type Db } from '../../src/store/db.js'
import { DeviceRegistry } from '../../src/store/devices.js'

// The real scrypt, counted: how many checks the registry asks for.
const scrypts = vi.hoisted(() => ({ count: 0 }))
vi.mock('../../src/core/scrypt-process.js', async (importActual) => {
  const actual = await importActual<typeof import('../../src/core/scrypt-process.js')>()
  return {
    ...actual,
    scryptOffProcess: (...args: Parameters<typeof actual.scryptOffProcess>) => {
      scrypts.count++
      return actual.scryptOffProcess(...args)
    },
  }
})

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

describe('device authentication', () => {
  it('runs one scrypt check for connections of one device that arrive while its check runs, and none once verified', async () => {
    const registry = new DeviceRegistry(db, dir, false)
    await registry.add({ ...a, secret: 'a-secret' })
    await registry.add({ ...b, secret: 'b-secret' })
    scrypts.count = 0
    // Ten clients of device a at once (one with a wrong secret), two of device b.
    const results = await Promise.all([
      ...Array.from({ length: 9 }, () => registry.authenticate(a, 'a-secret')),
      registry.authenticate(a, 'not-a-secret'),
      registry.authenticate(b, 'b-secret'),
      registry.authenticate(b, 'b-secret'),
    ])
    expect(results).toEqual([...Array(9).fill('ok'), 'bad_secret', 'ok', 'ok'])
    // a's secret, the wrong one, b's secret: three checks, not twelve.
    expect(scrypts.count).toBe(3)
    expect(await registry.authenticate(a, 'a-secret')).toBe('ok')
    expect(await registry.authenticate(a, 'not-a-secret')).toBe('bad_secret')
    expect(scrypts.count).toBe(3)

    // A check against the old hash still under way when the secret changes is not joined by a
    // connection that read the new hash: the scrypt queue runs two at a time, so `old` (read before the
    // change) waits behind the new hash and `busy`, and still runs when `fresh` starts.
    // (A device not yet verified: a verified one answers a wrong secret from its cache, without scrypt.)
    const c = { productId: 'meter', deviceId: 'c' }
    await registry.add({ ...c, secret: 'c-secret' })
    const set = registry.setSecret(c, 'c-secret-2')
    const busy = registry.authenticate(a, 'wrong-1')
    const old = registry.authenticate(c, 'c-secret-2')
    await set
    const fresh = registry.authenticate(c, 'c-secret-2')
    expect(await Promise.all([busy, old, fresh])).toEqual(['bad_secret', 'bad_secret', 'ok'])
  })
})
