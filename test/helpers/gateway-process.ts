// The gateway as a user runs it: `bin/iothub-edge.js start -c gateway.yaml` in a child process,
// reached only over the network (health/API over HTTP, devices over MQTT). Scenario tests use it
// to kill, restart and inspect the real thing.
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, existsSync, type WriteStream } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import YAML from 'yaml'
import { isRunning, trackChild, waitForExit } from './child-processes.js'
import { freePort } from './ports.js'
import { endpoint, request } from '../../src/cli-http.js'
import type { RuntimeInfo } from '../../src/web/runtime-files.js'

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url))
export const gatewayBin = path.join(repoRoot, 'bin', 'iothub-edge.js')
const builtCli = path.join(repoRoot, 'dist', 'cli.js')

export interface GatewayHealth {
  status: 'ok' | 'degraded'
  northbound: { connected: boolean; since: number | string | null }
  outbox: { messages: number; bytes: number; oldestAgeMs: number | null }
}

// Loose on purpose: tests hand in configs, including invalid ones, as plain objects.
type ConfigDoc = Record<string, unknown>
interface ListenerDoc {
  host?: string
  port?: number
  zone?: 'external' | 'internal'
  [key: string]: unknown
}

export interface GatewayProcessOptions {
  /** data folder to use (e.g. shared with an earlier GatewayProcess); default {tmp}/data */
  dataDir?: string
  /** extra environment for the child */
  env?: NodeJS.ProcessEnv
  /** script to run instead of bin/iothub-edge.js (for testing this helper) */
  bin?: string
  /** working directory of the process; default the config file's folder */
  cwd?: string
  /**
   * the program and its arguments that stand before `start -c FILE`, instead of this Node.js
   * running `bin`: e.g. an installed package's Node.js under qemu-user
   */
  command?: string[]
}

export interface ApiResponse<T> {
  status: number
  body: T
  headers: Headers
}

const LOG_LINES_KEPT = 2_000
const LOG_LINES_SHOWN = 40

function asObject(value: unknown): ConfigDoc {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as ConfigDoc) : {}
}

function requireBuilt(bin: string): void {
  if (bin === gatewayBin && !existsSync(builtCli)) {
    throw new Error(`${builtCli} is missing: run \`npm run build\` (scripts/test.sh and test/global-setup.ts do it)`)
  }
}

export class GatewayProcess {
  private tmp: string | undefined
  private configPath: string | undefined
  private resolvedDataDir: string | undefined
  private listeners: ListenerDoc[] = []
  private port: number | undefined
  private child: ChildProcess | undefined
  private logFile: WriteStream | undefined
  private readonly lines: string[] = []
  private partial = ''
  private token: string | undefined
  private lastExit: number | null = null
  private starts = 0

  constructor(
    private readonly config: object,
    private readonly opts: GatewayProcessOptions = {},
  ) {}

  get running(): boolean {
    return isRunning(this.child)
  }

  /** Exit code of the last run; null while running, before the first exit, or after a signal. */
  get exitCode(): number | null {
    return this.running ? null : this.lastExit
  }

  get pid(): number | undefined {
    return this.child?.pid
  }

  get httpPort(): number {
    return this.prepared(this.port)
  }

  get externalPort(): number {
    return this.listenerPort('external')
  }

  get internalPort(): number {
    return this.listenerPort('internal')
  }

  get externalUrl(): string {
    return `mqtt://127.0.0.1:${this.externalPort}`
  }

  get internalUrl(): string {
    return `mqtt://127.0.0.1:${this.internalPort}`
  }

  get dataDir(): string {
    return this.prepared(this.resolvedDataDir)
  }

  get tmpDir(): string {
    return this.prepared(this.tmp)
  }

  get configFile(): string {
    return this.prepared(this.configPath)
  }

  get apiToken(): string | undefined {
    return this.token
  }

  /** Everything the process wrote to stdout and stderr (the last 2000 lines), across restarts. */
  logs(): string {
    return [...this.lines, ...(this.partial ? [this.partial] : [])].join('\n')
  }

  /**
   * Spawn the CLI and resolve as soon as its output shows `line` (a point inside the start, before
   * /api/health answers): to act on the gateway while it is starting.
   */
  async startUntil(line: RegExp, timeoutMs = 30_000): Promise<void> {
    await this.start(timeoutMs, line)
  }

  /** Spawn the CLI and wait until /api/health answers (200 or 503); then read the API token. */
  async start(timeoutMs = 30_000, until?: RegExp): Promise<void> {
    if (this.running) throw new Error('GatewayProcess: already running')
    const bin = this.opts.bin ?? gatewayBin
    const [program, ...args] = this.opts.command ?? [process.execPath, bin]
    if (!this.opts.command) requireBuilt(bin)
    if (this.tmp === undefined) await this.prepare()
    const tmp = this.tmp as string

    this.starts++
    this.logFile ??= createWriteStream(path.join(tmp, 'gateway.log'), { flags: 'a' })
    this.record(`--- [test] start #${this.starts}: ${[program, ...args].join(' ')} start -c ${this.configFile}`)
    const child = spawn(program, [...args, 'start', '-c', this.configFile], {
      cwd: this.opts.cwd ?? tmp,
      env: { ...process.env, ...this.opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.child = child
    this.lastExit = null
    trackChild(child)
    let spawnError: Error | undefined
    child.once('error', (err) => (spawnError = err))
    // Read through a call: TypeScript would keep a checked `let` narrowed to undefined across awaits.
    const spawnFailure = (): string | undefined => spawnError && `could not spawn the gateway: ${spawnError.message}`
    child.once('exit', (code) => (this.lastExit = code))
    // 'close' comes after the last output has been read.
    child.once('close', (code, signal) => {
      this.flushPartial()
      this.record(`--- [test] exited: code ${code}, signal ${signal}`)
    })
    for (const stream of [child.stdout, child.stderr]) {
      stream?.setEncoding('utf8')
      stream?.on('data', (chunk: string) => this.capture(chunk))
    }

    const deadline = Date.now() + timeoutMs
    let last = 'no answer yet'
    for (;;) {
      if (!isRunning(child)) {
        // A child that failed to spawn has no pid either. Let the last output (or the spawn
        // error) arrive before quoting it.
        await sleep(50)
        throw this.failure(spawnFailure() ?? `gateway exited during start (code ${child.exitCode}, signal ${child.signalCode})`)
      }
      if (Date.now() > deadline) throw this.failure(`gateway did not ${until ? `log ${until}` : 'answer /api/health'} within ${timeoutMs} ms (${last})`)
      if (until) {
        const text = this.logs()
        if (until.test(text.slice(text.lastIndexOf(`--- [test] start #${this.starts}:`)))) return
        await sleep(2)
        continue
      }
      try {
        const status = await this.probeHealth()
        if (status === 200 || status === 503) break
        last = `last status ${status}`
      } catch (err) {
        last = `last error ${(err as Error).message}`
      }
      await sleep(100)
    }
    await this.readToken()
  }

  /**
   * GET /api/health's status. Over https (http.tls) as the CLI does it: once runtime.json is
   * written, trusting only the certificate it names (pinned by its fingerprint).
   */
  private async probeHealth(): Promise<number> {
    if (!asObject(asObject(this.config).http).tls) {
      const res = await fetch(this.httpUrl('/api/health'), { signal: AbortSignal.timeout(2_000) })
      await res.arrayBuffer()
      return res.status
    }
    const runtime = JSON.parse(await readFile(path.join(this.dataDir, 'runtime.json'), 'utf8')) as RuntimeInfo
    return (await request(endpoint('127.0.0.1', runtime), 'GET', '/api/health', {}, undefined, 2_000)).status
  }

  async health(): Promise<GatewayHealth> {
    const res = await fetch(this.httpUrl('/api/health'), { headers: this.authHeaders(), signal: AbortSignal.timeout(5_000) })
    const text = await res.text()
    if (res.status !== 200 && res.status !== 503) throw this.failure(`/api/health answered ${res.status}: ${text}`)
    try {
      return JSON.parse(text) as GatewayHealth
    } catch {
      throw this.failure(`/api/health answered ${res.status} with a body that is not JSON: ${text}`)
    }
  }

  /** Poll /api/health until predicate holds; the error quotes the last health seen and the logs. */
  async waitForHealth(predicate: (h: GatewayHealth) => boolean, timeoutMs = 15_000, what?: string): Promise<GatewayHealth> {
    const deadline = Date.now() + timeoutMs
    let last = 'no answer yet'
    for (;;) {
      try {
        const h = await this.health()
        if (predicate(h)) return h
        last = JSON.stringify(h)
      } catch (err) {
        last = `error: ${(err as Error).message.split('\n')[0]}`
      }
      if (Date.now() > deadline) {
        throw this.failure(`health did not satisfy ${what ?? predicate.toString()} within ${timeoutMs} ms; last: ${last}`)
      }
      await sleep(100)
    }
  }

  /** Call the REST API with the bearer token; a JSON body is parsed, anything else is text. */
  // `any` by default: tests assert on the shape of the answer rather than declare it.
  async api<T = any>(method: string, urlPath: string, body?: unknown): Promise<ApiResponse<T>> {
    const headers: Record<string, string> = { ...this.authHeaders() }
    if (body !== undefined) headers['content-type'] = 'application/json'
    const res = await fetch(this.httpUrl(urlPath), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    })
    const text = await res.text()
    let parsed: unknown = text
    if ((res.headers.get('content-type') ?? '').includes('json') && text !== '') {
      try {
        parsed = JSON.parse(text)
      } catch {
        parsed = text
      }
    }
    return { status: res.status, body: parsed as T, headers: res.headers }
  }

  /** SIGKILL (a power cut, as far as the process can tell) and wait for the exit. */
  async kill9(): Promise<void> {
    const child = this.child
    if (!child || !isRunning(child)) return
    child.kill('SIGKILL')
    await waitForExit(child, 5_000)
  }

  /** SIGTERM; resolves with the exit code (null if a signal ended it). Rejects after 15 s, and kills. */
  async stop(timeoutMs = 15_000): Promise<number | null> {
    const child = this.child
    if (!child || !isRunning(child)) return this.lastExit
    child.kill('SIGTERM')
    try {
      const { code } = await waitForExit(child, timeoutMs)
      return code
    } catch {
      child.kill('SIGKILL')
      await waitForExit(child, 5_000)
      throw this.failure(`gateway did not exit within ${timeoutMs} ms of SIGTERM; killed it`)
    }
  }

  /** Start again with the same config file, data folder and ports (stops it first if it runs). */
  async restart(timeoutMs?: number): Promise<void> {
    if (this.running) await this.stop()
    await this.start(timeoutMs)
  }

  async close(): Promise<void> {
    await this.kill9()
    const logFile = this.logFile
    this.logFile = undefined
    if (logFile) await new Promise<void>((resolve) => logFile.end(() => resolve()))
    if (this.tmp) await rm(this.tmp, { recursive: true, force: true })
    this.tmp = undefined
  }

  /** An Error whose message ends with the last 40 lines of the gateway's output. */
  failure(message: string): Error {
    const shown = this.logs().split('\n').slice(-LOG_LINES_SHOWN).join('\n')
    return new Error(`GatewayProcess: ${message}\n--- last ${LOG_LINES_SHOWN} lines of gateway output ---\n${shown}`)
  }

  private async prepare(): Promise<void> {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'iothub-edge-gw-'))
    this.tmp = tmp
    const doc = structuredClone(this.config) as ConfigDoc

    const gateway = asObject(doc.gateway)
    const given = typeof gateway.dataDir === 'string' ? gateway.dataDir : undefined
    // A relative dataDir resolves against the config file's folder, which is tmp.
    this.resolvedDataDir = path.resolve(tmp, this.opts.dataDir ?? given ?? 'data')
    doc.gateway = { ...gateway, dataDir: this.resolvedDataDir }

    // Ports are fixed here, once, so restarts come back on the same ones.
    const http = asObject(doc.http)
    const httpPort = typeof http.port === 'number' && http.port !== 0 ? http.port : await freePort()
    this.port = httpPort
    doc.http = { host: '127.0.0.1', ...http, port: httpPort }

    const broker = asObject(doc.broker)
    const listeners: ListenerDoc[] = Array.isArray(broker.listeners)
      ? (broker.listeners as ListenerDoc[])
      : [
          { host: '127.0.0.1', zone: 'external' },
          { host: '127.0.0.1', zone: 'internal' },
        ]
    this.listeners = []
    for (const l of listeners) {
      this.listeners.push({ ...l, port: typeof l.port === 'number' && l.port !== 0 ? l.port : await freePort() })
    }
    // IHE_TEST_BROKER_MQTT5=1 runs a suite against the MQTT 5 broker (decision 0021-mqtt5): how
    // the 3.1.1 suites were measured with `broker.mqtt5: true`.
    const mqtt5 = process.env.IHE_TEST_BROKER_MQTT5 === '1' ? { mqtt5: true } : {}
    doc.broker = { ...mqtt5, ...broker, listeners: this.listeners }

    if (typeof http.apiToken === 'string') this.token = http.apiToken
    this.configPath = path.join(tmp, 'gateway.yaml')
    await writeFile(this.configPath, YAML.stringify(doc))
  }

  private async readToken(): Promise<void> {
    const configured = asObject(asObject(this.config).http).apiToken
    if (typeof configured === 'string') {
      this.token = configured
      return
    }
    const file = path.join(this.dataDir, 'api-token')
    try {
      this.token = (await readFile(file, 'utf8')).trim()
    } catch (err) {
      throw this.failure(`gateway is up but ${file} cannot be read (${(err as Error).message}); config has no http.apiToken`)
    }
  }

  private listenerPort(zone: 'external' | 'internal'): number {
    this.prepared(this.port)
    const l = this.listeners.find((x) => (x.zone ?? 'external') === zone)
    if (!l || typeof l.port !== 'number') throw new Error(`GatewayProcess: the config has no ${zone} listener`)
    return l.port
  }

  private prepared<T>(value: T | undefined): T {
    if (value === undefined) throw new Error('GatewayProcess: start() first')
    return value
  }

  private httpUrl(urlPath: string): string {
    return `http://127.0.0.1:${this.httpPort}${urlPath.startsWith('/') ? '' : '/'}${urlPath}`
  }

  private authHeaders(): Record<string, string> {
    return this.token ? { authorization: `Bearer ${this.token}` } : {}
  }

  private capture(chunk: string): void {
    const parts = (this.partial + chunk).split('\n')
    this.partial = parts.pop() ?? ''
    for (const line of parts) this.record(line)
  }

  private flushPartial(): void {
    if (this.partial) this.record(this.partial)
    this.partial = ''
  }

  private record(line: string): void {
    this.lines.push(line)
    if (this.lines.length > LOG_LINES_KEPT) this.lines.splice(0, this.lines.length - LOG_LINES_KEPT)
    this.logFile?.write(`${line}\n`)
  }
}

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Run one CLI command to completion (`check-config`, `devices ...`). */
export function runCli(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number; bin?: string } = {},
): Promise<CliResult> {
  const bin = opts.bin ?? gatewayBin
  requireBuilt(bin)
  const child = spawn(process.execPath, [bin, ...args], {
    cwd: opts.cwd ?? repoRoot,
    env: { ...process.env, ...opts.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  trackChild(child)
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8')
  child.stderr.setEncoding('utf8')
  child.stdout.on('data', (c: string) => (stdout += c))
  child.stderr.on('data', (c: string) => (stderr += c))
  // A CLI that exits without reading stdin would make this write fail with EPIPE; that is fine.
  child.stdin.on('error', () => undefined)
  child.stdin.end(opts.input ?? '')
  const timeoutMs = opts.timeoutMs ?? 30_000
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`iothub-edge ${args.join(' ')}: no exit within ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`))
    }, timeoutMs)
    child.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    // 'close' rather than 'exit': all output has been read by then.
    child.once('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}
