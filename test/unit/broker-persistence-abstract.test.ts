// The local broker's SQLite persistence (src/store/broker-sessions.ts) against aedes-persistence's
// own abstract test suite, the spec every aedes persistence passes (its README: "A persistence needs
// to pass all tests defined in ./abstract.js"). The version is the one aedes 1.2.0 depends on (11:
// async methods, the broker handed to setup()), run with `testAsync: true` as its own test files run
// the memory persistence.
//
// The suite is written for node:test (`test(name, async t => ...)` with t.plan, t.assert,
// t.diagnostic). Each of its tests becomes one vitest test here: `t.assert` is node:assert (the
// functions node:test exposes there), counted, and a test that made another number of assertions
// than it planned fails, as under node:test. Each instance gets a new database file.
import assert from 'node:assert'
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, it } from 'vitest'
import { BrokerSessionStore, memoryBrokerSessions } from '../../src/store/broker-sessions.js'

const require = createRequire(import.meta.url)
const abstractSuite = require('aedes-persistence/abstract.js') as (opts: object) => void

interface NodeTestContext {
  plan(n: number): void
  assert: Record<string, (...args: unknown[]) => void>
  diagnostic(msg: string): void
}

type SuiteTest = (t: NodeTestContext) => Promise<void>

const dir = mkdtempSync(path.join(os.tmpdir(), 'broker-persistence-'))
let instances = 0
const opened: BrokerSessionStore[] = []

afterAll(() => {
  for (const s of opened) s.close()
  rmSync(dir, { recursive: true, force: true })
})

/** A node:test test as a vitest test. */
function nodeTest(name: string, fn: SuiteTest): void {
  it(name, async () => {
    let planned: number | undefined
    let made = 0
    const counted = new Proxy(assert as unknown as Record<string, (...args: unknown[]) => void>, {
      get(target, prop: string) {
        const f = target[prop]
        return typeof f === 'function'
          ? (...args: unknown[]) => {
              made++
              return f(...args)
            }
          : f
      },
    })
    await fn({ plan: (n) => (planned = n), assert: counted, diagnostic: () => undefined })
    if (planned !== undefined) assert.equal(made, planned, `planned ${planned} assertions, made ${made}`)
  })
}

describe('aedes-persistence abstract suite: BrokerSessionStore (broker.db)', () => {
  abstractSuite({
    test: nodeTest,
    testAsync: true,
    persistence: () => {
      const s = new BrokerSessionStore(path.join(dir, `broker-${++instances}.db`))
      opened.push(s)
      return s
    },
  })
})

// broker.persistence: memory runs the same store without its file (so the queue limits hold there too).
describe('aedes-persistence abstract suite: BrokerSessionStore in memory only', () => {
  abstractSuite({
    test: nodeTest,
    testAsync: true,
    persistence: () => memoryBrokerSessions(),
  })
})
