// Serving the web app (fastify's server.js to app.ts's app.js): listen, and leave in the data dir
// what the CLI needs to reach a running gateway (runtime.json) and to authenticate (api-token).
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import type { WebDeps } from './deps.js'
import { ErrorCodes, StartError } from '../core/errors.js'

export const RUNTIME_FILE = 'runtime.json'
export const API_TOKEN_FILE = 'api-token'

/** Where a running gateway can be reached, for the CLI acting on the same data dir. */
export interface RuntimeInfo {
  pid: number
  httpPort: number
}

export interface WebServerOptions {
  host: string
  /** 0 picks a free port; `port` tells which after start(). */
  port: number
  dataDir: string
}

export class WebServer {
  private app?: FastifyInstance
  private boundPort = 0
  private wroteRuntime = false

  constructor(
    private readonly deps: WebDeps,
    private readonly opts: WebServerOptions,
  ) {}

  get port(): number {
    return this.boundPort
  }

  async start(): Promise<void> {
    this.app = buildApp(this.deps)
    try {
      await this.app.listen({ host: this.opts.host, port: this.opts.port })
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      const why = e.code === 'EADDRINUSE' ? 'another process has this port' : e.code === 'EADDRNOTAVAIL' ? 'the address is not one of this machine' : (e.code ?? e.message)
      throw new StartError(
        ErrorCodes.HTTP_LISTEN_FAILED,
        'http.port',
        `cannot listen on ${this.opts.host}:${this.opts.port} (${why}): stop the other process or change http.port / http.host`,
      )
    }
    const addr = this.app.server.address()
    this.boundPort = typeof addr === 'object' && addr ? addr.port : this.opts.port
    const runtime: RuntimeInfo = { pid: process.pid, httpPort: this.boundPort }
    try {
      writeFileSync(path.join(this.opts.dataDir, RUNTIME_FILE), JSON.stringify(runtime), { mode: 0o600 })
      this.wroteRuntime = true
    } catch (err) {
      // A full disk must not keep the gateway from starting; only the CLI's shortcut is lost.
      this.deps.log.warn({ err: (err as Error).message }, `could not write ${RUNTIME_FILE}: the devices CLI will not find this running gateway`)
    }
  }

  async stop(): Promise<void> {
    // Only our own: a start that failed to listen must not erase another gateway's file.
    if (this.wroteRuntime) rmSync(path.join(this.opts.dataDir, RUNTIME_FILE), { force: true })
    this.wroteRuntime = false
    await this.app?.close()
  }
}

export function readApiToken(dataDir: string): string | undefined {
  const f = path.join(dataDir, API_TOKEN_FILE)
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined
}

/**
 * The configured token, else the one in {dataDir}/api-token, else a new one written there (0600);
 * `created` is told the file's path then (the token itself is never printed or logged).
 */
export function loadOrCreateApiToken(dataDir: string, configured?: string, created?: (file: string) => void): string {
  if (configured) return configured
  const existing = readApiToken(dataDir)
  if (existing) return existing
  const token = randomBytes(24).toString('base64url')
  const file = path.join(dataDir, API_TOKEN_FILE)
  writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' })
  created?.(file)
  return token
}
