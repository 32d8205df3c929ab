// Temporary: replaced by the web rework. Listens, records runtime.json, tokens.
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import path from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Logger } from '../core/log.js'

const TOKEN_FILE = 'api-token'
export const RUNTIME_FILE = 'runtime.json'

export interface RuntimeInfo {
  pid: number
  httpPort: number
}

export function readApiToken(dataDir: string): string | undefined {
  const f = path.join(dataDir, TOKEN_FILE)
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined
}

export function loadOrCreateApiToken(dataDir: string, configured?: string): string {
  if (configured) return configured
  const existing = readApiToken(dataDir)
  if (existing) return existing
  const token = randomBytes(24).toString('base64url')
  const file = path.join(dataDir, TOKEN_FILE)
  writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' })
  process.stdout.write(`API token generated (stored in ${file}): ${token}\n`)
  return token
}

export class WebServer {
  private boundPort = 0
  constructor(
    private readonly o: { host: string; port: number; dataDir: string; log: Logger },
    private readonly app: FastifyInstance,
  ) {}

  get port(): number {
    return this.boundPort
  }

  async start(): Promise<void> {
    await this.app.listen({ host: this.o.host, port: this.o.port })
    const addr = this.app.server.address()
    this.boundPort = typeof addr === 'object' && addr ? addr.port : this.o.port
    const runtime: RuntimeInfo = { pid: process.pid, httpPort: this.boundPort }
    try {
      writeFileSync(path.join(this.o.dataDir, RUNTIME_FILE), JSON.stringify(runtime), { mode: 0o600 })
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, `could not write ${RUNTIME_FILE}: the devices CLI will not find this running gateway`)
    }
  }

  async stop(): Promise<void> {
    rmSync(path.join(this.o.dataDir, RUNTIME_FILE), { force: true })
    await this.app.close()
  }
}
