// Serving the web app (fastify's server.js to app.ts's app.js): listen (http, or https with
// http.tls), and leave in the data dir what the CLI needs to reach a running gateway (runtime.json:
// port, scheme, the certificate's fingerprint to pin) and to authenticate (api-token). At a start
// with no web UI user, the one-time setup code is made and told (src/web/auth-setup.ts).
import { rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import type { WebDeps } from './deps.js'
import { ErrorCodes, StartError } from '../core/errors.js'
import type { ServerTls } from './tls.js'
import { createSetupCode, readSetupCode, setupCodeFile } from './auth-setup.js'
import { RUNTIME_FILE, type RuntimeInfo } from './runtime-files.js'

export interface WebServerOptions {
  host: string
  /** 0 picks a free port; `port` tells which after start(). */
  port: number
  dataDir: string
  /** TLS key and certificate (http.tls); absent: plain HTTP. */
  tls?: ServerTls
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
    const tls = this.opts.tls
    this.app = buildApp(this.deps, tls && { key: tls.key, cert: tls.cert })
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
    const runtime: RuntimeInfo = { pid: process.pid, httpPort: this.boundPort, scheme: tls ? 'https' : 'http', ...(tls ? { certSha256: tls.fingerprint256, certFile: tls.certFile } : {}) }
    try {
      writeFileSync(path.join(this.opts.dataDir, RUNTIME_FILE), JSON.stringify(runtime), { mode: 0o600 })
      this.wroteRuntime = true
    } catch (err) {
      // A full disk must not keep the gateway from starting; only the CLI's shortcut is lost.
      this.deps.log.warn({ err: (err as Error).message }, `could not write ${RUNTIME_FILE}: the devices CLI will not find this running gateway`)
    }
    if (tls) {
      this.deps.log.info(
        { certificate: tls.certFile, sha256: tls.fingerprint256 },
        tls.selfSigned
          ? `web UI over https with the gateway's own self-signed certificate${tls.created ? ' (made now)' : ''}, SHA-256 fingerprint ${tls.fingerprint256}: the browser warns once; compare this fingerprint with the one it shows before accepting`
          : `web UI over https with ${tls.certFile}, SHA-256 fingerprint ${tls.fingerprint256}`,
      )
    }
    else if (this.deps.ui && !isLoopback(this.opts.host)) {
      this.deps.log.info(`web UI and API over plain http on ${this.opts.host}:${this.boundPort}: logins and cookies cross the network unencrypted; set http.tls.selfSigned: true (or cert and key) for https`)
    }
    this.tellSetupCode()
  }

  /** Where a browser reaches this server: the bound address, or this machine's first LAN address when bound to all. */
  url(): string {
    const any = this.opts.host === '0.0.0.0' || this.opts.host === '::' || this.opts.host === ''
    const lan = Object.values(os.networkInterfaces()).flatMap((l) => l ?? []).find((a) => !a.internal && a.family === 'IPv4')?.address
    const host = any ? (lan ?? os.hostname()) : this.opts.host
    return `${this.opts.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${this.boundPort}/`
  }

  /**
   * No web UI user yet: a setup code, made now and told in this one log line (its only appearance
   * in the log), or, made at an earlier start, only where its file is.
   */
  private tellSetupCode(): void {
    const ui = this.deps.ui
    if (!ui || ui.store.userCount() > 0) return
    const file = setupCodeFile(ui.dataDir)
    try {
      if (readSetupCode(ui.dataDir)) {
        this.deps.log.warn({ file }, `the web UI has no user yet: open ${this.url()} and enter the setup code from ${file} (told in the log when it was made)`)
        return
      }
      const { code } = createSetupCode(ui.dataDir)
      this.deps.log.warn({ file }, `the web UI has no user yet: open ${this.url()} and enter the setup code ${code} (also in ${file}, mode 0600) to choose the admin's password`)
    } catch (err) {
      this.deps.log.error({ err: (err as Error).message, file }, `could not write the web UI's setup code to ${file}: the UI cannot be set up until the data folder is writable`)
    }
  }

  async stop(): Promise<void> {
    // Only our own: a start that failed to listen must not erase another gateway's file.
    if (this.wroteRuntime) rmSync(path.join(this.opts.dataDir, RUNTIME_FILE), { force: true })
    this.wroteRuntime = false
    await this.app?.close()
  }
}

const isLoopback = (host: string): boolean => host === 'localhost' || host === '::1' || host.startsWith('127.')

