// The cloud IoTHub's broker, played by Debian's Mosquitto (2.0.x) in a temp dir, with the
// authentication and ACL that PROTOCOL.md says the hub applies to devices. Mosquitto has no
// server-side subscriptions, so devices here get read access to their own cmd/rpc/m2m topics
// and subscribe to them themselves; a `hub` superuser stands in for the hub server.
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import mqtt, { type MqttClient } from 'mqtt'
import { isRunning, trackChild, waitForExit } from './child-processes.js'
import { freePort, waitForTcp } from './ports.js'

const execFileAsync = promisify(execFile)

const MOSQUITTO = process.env.MOSQUITTO_BIN ?? '/usr/sbin/mosquitto'
const MOSQUITTO_PASSWD = process.env.MOSQUITTO_PASSWD_BIN ?? 'mosquitto_passwd'

export const HUB_USERNAME = 'hub'
export const HUB_PASSWORD = 'hub-secret'

export interface DeviceRef {
  productId: string
  deviceId: string
}

export interface DeviceCredentials extends DeviceRef {
  secret: string
}

export interface HubGateway extends DeviceCredentials {
  children: DeviceRef[]
}

export interface HubUser {
  username: string
  password: string
  /** raw mosquitto ACL lines for this user, e.g. 'topic readwrite #' */
  acl: string[]
}

export interface HubBrokerOptions {
  devices: DeviceCredentials[]
  gateway?: HubGateway
  extraUsers?: HubUser[]
  /** More mosquitto.conf lines (e.g. `max_packet_size 262144`, a hub's packet size limit). */
  config?: string[]
}

export interface RecordedMessage {
  topic: string
  payload: Buffer
  qos: number
  retain: boolean
  receivedAt: number
}

/** What a device may publish, per PROTOCOL.md "Broker-side rules" (publish ACL). */
function upTopics({ productId: p, deviceId: d }: DeviceRef): string[] {
  return [
    `upload_data/${p}/${d}/+/+`,
    `update_status/${p}/${d}/+`,
    `cmd_resp/${p}/${d}/+/+/+`,
    `rpc_resp/${p}/${d}/+/+/+`,
    `get/${p}/${d}/+/+`,
    `m2m/${p}/+/${d}/+`,
    `update_ota_status/${p}/${d}/+`,
  ]
}

/**
 * What a device may receive. PROTOCOL.md grants the tag subscription; cmd/rpc/m2m stand in for
 * the server-side subscriptions the hub makes on a device's behalf (devices here subscribe
 * themselves). Read ACLs are checked on SUBSCRIBE and again on every delivery.
 */
function downTopics({ productId: p, deviceId: d }: DeviceRef): string[] {
  return [`tags/${p}/+/cmd/#`, `cmd/${p}/${d}/#`, `rpc/${p}/${d}/#`, `m2m/${p}/${d}/#`]
}

function deviceAcl(device: DeviceRef): string[] {
  return [...upTopics(device).map((t) => `topic write ${t}`), ...downTopics(device).map((t) => `topic read ${t}`)]
}

export function usernameOf(device: DeviceRef): string {
  return `${device.productId}/${device.deviceId}`
}

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n')
}

export class HubBroker {
  private dir: string | undefined
  private port: number | undefined
  private child: ChildProcess | undefined
  private stderr = ''
  private readonly recorders = new Set<HubRecorder>()

  constructor(private readonly options: HubBrokerOptions) {}

  get url(): string {
    if (this.port === undefined) throw new Error('HubBroker: start() first')
    return `mqtt://127.0.0.1:${this.port}`
  }

  get brokerPort(): number {
    if (this.port === undefined) throw new Error('HubBroker: start() first')
    return this.port
  }

  get running(): boolean {
    return isRunning(this.child)
  }

  /** Path of Mosquitto's log file (log_type all, flushed per line), for tests that follow it as it grows. */
  get logPath(): string {
    if (this.dir === undefined) throw new Error('HubBroker: start() first')
    return path.join(this.dir, 'mosquitto.log')
  }

  /** Mosquitto's own log (log_type all), for diagnosing a failing test. */
  /**
   * The topic filters Mosquitto holds for a client, read from its log (log_type all): what a client
   * subscribed, seen from the broker's side rather than from the client's own state.
   */
  async subscriptionsOf(clientId: string): Promise<Set<string>> {
    const subs = new Set<string>()
    let op: 'sub' | 'unsub' | undefined
    for (const raw of (await this.log()).split('\n')) {
      const line = raw.replace(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d: /, '')
      if (line.startsWith('Received SUBSCRIBE from ')) op = line === `Received SUBSCRIBE from ${clientId}` ? 'sub' : undefined
      else if (line.startsWith('Received UNSUBSCRIBE from ')) op = line === `Received UNSUBSCRIBE from ${clientId}` ? 'unsub' : undefined
      else if (line.startsWith('Sending SUBACK') || line.startsWith('Sending UNSUBACK') || line.startsWith('Received ')) op = undefined
      else if (op && line.startsWith('\t')) {
        const filter = line.slice(1).replace(/ \(QoS \d\)$/, '')
        if (op === 'sub') subs.add(filter)
        else subs.delete(filter)
      }
    }
    return subs
  }

  async log(): Promise<string> {
    if (!this.dir) return ''
    const file = path.join(this.dir, 'mosquitto.log')
    return existsSync(file) ? readFile(file, 'utf8') : ''
  }

  async start(): Promise<void> {
    if (this.running) throw new Error('HubBroker: already running')
    if (!existsSync(MOSQUITTO)) {
      throw new Error(`HubBroker: ${MOSQUITTO} not found; install Debian's mosquitto (scripts/test.sh does) or set MOSQUITTO_BIN`)
    }
    // Files and port are made once; restarts reuse them so persistence and URLs survive.
    if (this.dir === undefined) await this.prepare()
    const dir = this.dir as string
    this.stderr = ''
    const child = spawn(MOSQUITTO, ['-c', path.join(dir, 'mosquitto.conf')], {
      cwd: dir,
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    this.child = child
    trackChild(child)
    let spawnError: Error | undefined
    child.once('error', (err) => (spawnError = err))
    child.stderr?.setEncoding('utf8')
    child.stderr?.on('data', (chunk: string) => (this.stderr = (this.stderr + chunk).slice(-20_000)))
    try {
      await waitForTcp(this.brokerPort, {
        timeoutMs: 10_000,
        abort: () => {
          if (spawnError) return `mosquitto could not be started: ${spawnError.message}`
          if (!isRunning(child)) return `mosquitto exited (code ${child.exitCode}, signal ${child.signalCode})`
          return undefined
        },
      })
    } catch (err) {
      if (isRunning(child)) child.kill('SIGKILL')
      throw new Error(`${(err as Error).message}\n--- stderr ---\n${tail(this.stderr, 40)}\n--- log ---\n${tail(await this.log(), 40)}`)
    }
  }

  /** SIGTERM and wait: Mosquitto saves its in-memory database (sessions, queued messages) on the way out. */
  async stop(): Promise<void> {
    const child = this.child
    if (!child || !isRunning(child)) return
    child.kill('SIGCONT') // a frozen one would not act on SIGTERM
    child.kill('SIGTERM')
    try {
      await waitForExit(child, 10_000)
    } catch (err) {
      child.kill('SIGKILL')
      await waitForExit(child, 5_000)
      throw new Error(`HubBroker: mosquitto ignored SIGTERM (${(err as Error).message}); killed it`)
    }
  }

  /** SIGKILL: a crash; whatever was not saved yet (autosave is every 30 min) is lost. */
  async kill(): Promise<void> {
    const child = this.child
    if (!child || !isRunning(child)) return
    child.kill('SIGKILL')
    await waitForExit(child, 5_000)
  }

  /**
   * SIGSTOP: a hub that stops answering while its connections stay open (a hung broker, or a
   * half-open connection behind a NAT that forgot it): only keepalive notices. `resume` is SIGCONT.
   */
  freeze(): void {
    if (isRunning(this.child)) this.child!.kill('SIGSTOP')
  }

  resume(): void {
    if (isRunning(this.child)) this.child!.kill('SIGCONT')
  }

  async restart(): Promise<void> {
    await this.stop()
    await this.start()
  }

  async close(): Promise<void> {
    const recorders = [...this.recorders]
    this.recorders.clear()
    await Promise.allSettled(recorders.map((r) => r.close()))
    try {
      await this.stop()
    } finally {
      await this.kill()
      if (this.dir) await rm(this.dir, { recursive: true, force: true })
      this.dir = undefined
    }
  }

  /**
   * Record every message on `topicFilter` as the hub superuser. The session is persistent (clean
   * false, a client id fixed per filter), so messages published while the recorder is closed or
   * the broker restarts are delivered once it is back; it reconnects by itself.
   */
  async subscribeAll(topicFilter = '#', opts: { clientId?: string } = {}): Promise<HubRecorder> {
    const clientId = opts.clientId ?? `hub-recorder-${createHash('sha1').update(topicFilter).digest('hex').slice(0, 12)}`
    const client = mqtt.connect(this.url, {
      protocolVersion: 4,
      clientId,
      clean: false,
      username: HUB_USERNAME,
      password: HUB_PASSWORD,
      reconnectPeriod: 200,
      connectTimeout: 5_000,
    })
    const recorder = new HubRecorder(client, topicFilter, () => this.recorders.delete(recorder))
    this.recorders.add(recorder)
    try {
      await recorder.ready()
    } catch (err) {
      await recorder.close()
      throw err
    }
    return recorder
  }

  /** Publish as the hub superuser (a command, a tag command, ...) on a short-lived connection. */
  async publishAsHub(topic: string, payload: string | Buffer, qos: 0 | 1 | 2 = 1): Promise<void> {
    const client = await mqtt.connectAsync(
      this.url,
      {
        protocolVersion: 4,
        clientId: `hub-publisher-${randomBytes(4).toString('hex')}`,
        username: HUB_USERNAME,
        password: HUB_PASSWORD,
        reconnectPeriod: 0,
        connectTimeout: 5_000,
      },
      false,
    )
    try {
      await client.publishAsync(topic, payload, { qos })
    } finally {
      await client.endAsync()
    }
  }

  private async prepare(): Promise<void> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'iothub-edge-hub-'))
    this.dir = dir
    this.port = await freePort()

    const users: HubUser[] = [{ username: HUB_USERNAME, password: HUB_PASSWORD, acl: ['topic readwrite #'] }]
    for (const d of this.options.devices) {
      users.push({ username: usernameOf(d), password: d.secret, acl: deviceAcl(d) })
    }
    const gw = this.options.gateway
    if (gw) {
      // The gateway speaks for its children: their up topics and their down topics.
      const acl = [...deviceAcl(gw), ...gw.children.flatMap(deviceAcl)]
      users.push({ username: usernameOf(gw), password: gw.secret, acl: [...new Set(acl)] })
    }
    users.push(...(this.options.extraUsers ?? []))
    const names = users.map((u) => u.username)
    const duplicate = names.find((n, i) => names.indexOf(n) !== i)
    if (duplicate) throw new Error(`HubBroker: user ${duplicate} defined twice`)

    const passwordFile = path.join(dir, 'passwd')
    await writeMosquittoPasswords(passwordFile, users)

    // `topic` lines belong to the `user` line above them; no lines before the first `user`,
    // so an anonymous client (refused anyway) would get nothing.
    const aclFile = path.join(dir, 'acl')
    const acl = users.flatMap((u) => [`user ${u.username}`, ...u.acl, ''])
    await writeFile(aclFile, acl.join('\n'), { mode: 0o600 })

    const conf = [
      // As root Mosquitto would switch to the `mosquitto` user, which cannot write this 0700 dir.
      ...(process.getuid?.() === 0 ? ['user root'] : []),
      `listener ${this.port} 127.0.0.1`,
      'allow_anonymous false',
      `password_file ${passwordFile}`,
      `acl_file ${aclFile}`,
      'persistence true',
      `persistence_location ${dir}/`,
      // 0 would also mean "no maximum" in 2.0.x; a large bound keeps a runaway test finite.
      'max_queued_messages 1000000',
      'max_inflight_messages 0',
      'set_tcp_nodelay true',
      `log_dest file ${path.join(dir, 'mosquitto.log')}`,
      'log_type all',
      'log_timestamp_format %Y-%m-%dT%H:%M:%S',
      ...(this.options.config ?? []),
      '',
    ]
    await writeFile(path.join(dir, 'mosquitto.conf'), conf.join('\n'))
  }
}

export class HubRecorder {
  readonly messages: RecordedMessage[] = []
  private lastError: Error | undefined
  private waiters = new Set<() => void>()
  private closed = false

  constructor(
    private readonly client: MqttClient,
    readonly topicFilter: string,
    private readonly onClose: () => void,
  ) {
    // Attached before CONNACK: a resumed session delivers queued messages right after it.
    client.on('message', (topic, payload, packet) => {
      this.messages.push({ topic, payload, qos: packet.qos, retain: packet.retain, receivedAt: Date.now() })
      for (const w of this.waiters) w()
    })
    // Reconnect attempts while the broker is down report ECONNREFUSED here; keep the last one.
    client.on('error', (err) => (this.lastError = err))
  }

  /** @internal resolves once connected and subscribed */
  async ready(): Promise<void> {
    if (!this.client.connected) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          cleanup()
          reject(new Error(`HubRecorder: could not connect as ${HUB_USERNAME}: ${this.lastError?.message ?? 'timeout'}`))
        }, 10_000)
        const onConnect = (): void => {
          cleanup()
          resolve()
        }
        const cleanup = (): void => {
          clearTimeout(timer)
          this.client.off('connect', onConnect)
        }
        this.client.on('connect', onConnect)
      })
    }
    const granted = await this.client.subscribeAsync(this.topicFilter, { qos: 1 })
    if (granted.some((g) => g.qos === 128)) throw new Error(`HubRecorder: subscription to ${this.topicFilter} refused`)
  }

  get connected(): boolean {
    return this.client.connected
  }

  topics(): string[] {
    return this.messages.map((m) => m.topic)
  }

  clear(): void {
    this.messages.length = 0
  }

  /** First recorded message (already received or still to come) that matches. */
  waitFor(predicate: (m: RecordedMessage) => boolean, timeoutMs = 5_000, what?: string): Promise<RecordedMessage> {
    return this.until(
      () => this.messages.find(predicate),
      timeoutMs,
      () => `a message matching ${what ?? predicate.toString()}`,
    )
  }

  /** Resolves with the first n recorded messages once there are at least n. */
  waitForCount(n: number, timeoutMs = 5_000): Promise<RecordedMessage[]> {
    return this.until(
      () => (this.messages.length >= n ? this.messages.slice(0, n) : undefined),
      timeoutMs,
      () => `${n} message(s)`,
    )
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.onClose()
    for (const w of this.waiters) w()
    // Ending without unsubscribing keeps the persistent session: later messages queue for it.
    await this.client.endAsync(!this.client.connected)
  }

  private until<T>(check: () => T | undefined, timeoutMs: number, expected: () => string): Promise<T> {
    const now = check()
    if (now !== undefined) return Promise.resolve(now)
    return new Promise<T>((resolve, reject) => {
      const waiter = (): void => {
        const found = check()
        if (found !== undefined) {
          done()
          resolve(found)
        } else if (this.closed) {
          done()
          reject(new Error(`HubRecorder(${this.topicFilter}): closed while waiting for ${expected()}`))
        }
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`HubRecorder(${this.topicFilter}): expected ${expected()} within ${timeoutMs} ms; ${this.describeReceived()}`))
      }, timeoutMs)
      const done = (): void => {
        clearTimeout(timer)
        this.waiters.delete(waiter)
      }
      this.waiters.add(waiter)
    })
  }

  private describeReceived(): string {
    if (this.messages.length === 0) {
      return `received nothing${this.client.connected ? '' : ` (not connected: ${this.lastError?.message ?? 'unknown'})`}`
    }
    const shown = this.messages.slice(-20).map((m) => {
      const text = m.payload.toString('utf8')
      return `  ${m.topic} qos${m.qos} ${JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}...` : text)}`
    })
    const skipped = this.messages.length - shown.length
    return `received ${this.messages.length}:${skipped > 0 ? ` (first ${skipped} not shown)` : ''}\n${shown.join('\n')}`
  }
}

/** A Mosquitto `password_file`: plain "user:password" lines, then one `mosquitto_passwd -U` hashes them all in place. */
export async function writeMosquittoPasswords(file: string, users: { username: string; password: string }[]): Promise<void> {
  await writeFile(file, users.map((u) => `${u.username}:${u.password}\n`).join(''), { mode: 0o600 })
  try {
    await execFileAsync(MOSQUITTO_PASSWD, ['-U', file])
  } catch (err) {
    throw new Error(`${MOSQUITTO_PASSWD} -U failed (is mosquitto installed?): ${(err as Error).message}`)
  }
}
