// The web server on a real port (0) and the files it leaves for the CLI in the data dir:
// runtime.json while it runs, and the API token.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import type { WebDeps } from '../../src/web/deps.js'
import { WebServer } from '../../src/web/server.js'
import { loadOrCreateApiToken, readApiToken, RUNTIME_FILE } from '../../src/web/runtime-files.js'

let dir: string
const logs: Record<string, unknown>[] = []

function deps(): WebDeps {
  const unused = (): never => {
    throw new Error('not used by these tests')
  }
  return {
    log: pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }),
    apiToken: 'tok',
    health: () => ({
      status: 'ok',
      reasons: [],
      northbound: { configured: false, connected: false, since: null, downSince: null, links: 0, linksConnected: 0, lastError: null, nextRetryAt: null },
      outbox: { messages: 0, bytes: 0, oldestAgeMs: 0, maxBytes: 1, drainRate: { last10s: 0, last60s: 0 } },
      clock: { offsetMs: 0, measuredAt: null },
      adapters: [],
    }),
    metrics: unused,
    outboxStats: unused,
    devices: { list: unused, get: unused, add: unused, setEnabled: unused, setSecret: unused, setTags: unused, remove: unused, connections: unused, online: unused, lastSeen: unused, shadow: unused },
    commands: { history: unused, send: unused, waitForReply: unused },
    adapterRoutes: [],
  }
}

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'web-server-'))
  logs.length = 0
})
afterEach(() => {
  vi.restoreAllMocks()
  rmSync(dir, { recursive: true, force: true })
})

describe('WebServer', () => {
  it('listens, records {pid, httpPort} in runtime.json (0600) while it runs, and removes it on stop', async () => {
    const server = new WebServer(deps(), { host: '127.0.0.1', port: 0, dataDir: dir })
    await server.start()
    try {
      expect(server.port).toBeGreaterThan(0)
      const file = path.join(dir, RUNTIME_FILE)
      expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ pid: process.pid, httpPort: server.port, scheme: 'http' })
      expect(statSync(file).mode & 0o777).toBe(0o600)
      const res = await fetch(`http://127.0.0.1:${server.port}/api/health`)
      expect(res.status).toBe(200)
      await res.arrayBuffer()
    } finally {
      await server.stop()
    }
    expect(existsSync(path.join(dir, RUNTIME_FILE))).toBe(false)
  })

  it('starts even when runtime.json cannot be written, and says so', async () => {
    const server = new WebServer(deps(), { host: '127.0.0.1', port: 0, dataDir: path.join(dir, 'missing') })
    await server.start()
    try {
      expect(logs).toContainEqual(expect.objectContaining({ level: 40, msg: expect.stringContaining(RUNTIME_FILE) }))
      const res = await fetch(`http://127.0.0.1:${server.port}/api/health`)
      expect(res.status).toBe(200)
      await res.arrayBuffer()
    } finally {
      await server.stop()
    }
  })
})

describe('API token', () => {
  it('is generated once into {dataDir}/api-token (0600); only the file is told, the token is never printed', () => {
    const printed: string[] = []
    vi.spyOn(process.stdout, 'write').mockImplementation((s) => printed.push(String(s)) > 0)
    const created: string[] = []
    expect(readApiToken(dir)).toBeUndefined()
    const token = loadOrCreateApiToken(dir, undefined, (f) => created.push(f))
    expect(token).toMatch(/^[A-Za-z0-9_-]{32}$/)
    const file = path.join(dir, 'api-token')
    expect(statSync(file).mode & 0o777).toBe(0o600)
    expect(created).toEqual([file])
    expect(loadOrCreateApiToken(dir, undefined, (f) => created.push(f))).toBe(token)
    expect(readApiToken(dir)).toBe(token)
    expect(created).toHaveLength(1)
    expect(printed.join('')).not.toContain(token)
  })

  it('is the configured one when there is one, and then nothing is written', () => {
    expect(loadOrCreateApiToken(dir, 'from-config')).toBe('from-config')
    expect(existsSync(path.join(dir, 'api-token'))).toBe(false)
  })
})
