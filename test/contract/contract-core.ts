// An AdapterContext for adapter contract tests: a real registry and seen-set on a real SQLite file,
// and an uplink sink the test can hold or fail (the core is not what these tests are about).
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import type { AdapterContext, ClientSession, DeviceDirectory, RecordSet, ReplyStatus, SeenSet } from '../../src/core/adapter-context.js'
import { Metrics } from '../../src/core/metrics.js'
import type { Command, DeviceRef, Uplink } from '../../src/core/types.js'
import { openDatabase, type Db } from '../../src/store/db.js'
import { DeviceRegistry } from '../../src/store/devices.js'
import { SeenStore } from '../../src/store/seen.js'
import { AdapterRecordStore } from '../../src/store/adapter-records.js'

export class ContractCore implements AdapterContext {
  readonly log = pino({ level: 'silent' })
  readonly allMetrics = new Metrics()
  readonly metrics = this.allMetrics.forAdapter('contract')
  readonly registry: DeviceRegistry
  readonly devices: DeviceDirectory
  private readonly seenStore: SeenStore
  private readonly recordStore: AdapterRecordStore
  readonly uplinks: Uplink[] = []
  readonly sessions: { opened: ClientSession[]; closed: ClientSession[] } = { opened: [], closed: [] }
  private readonly dir: string
  private readonly db: Db
  private held: (() => void)[] | undefined
  private failure: Error | undefined

  constructor() {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'contract-'))
    this.db = openDatabase(this.dir)
    this.registry = new DeviceRegistry(this.db, this.dir, false)
    this.seenStore = new SeenStore(this.db)
    this.recordStore = new AdapterRecordStore(this.db)
    const registry = this.registry
    this.devices = {
      authenticate: (d, secret) => registry.authenticate(d, secret),
      get: (d) => registry.get(d),
      list: () => [...registry.list()],
      register: async (d, opts) => registry.get(d) ?? (await registry.add({ ...d, tags: opts?.tags ?? [] })).device,
      onRevoked: (l) => {
        registry.on('disabled', (d: DeviceRef) => l(d, 'disabled'))
        registry.on('removed', (d: DeviceRef) => l(d, 'removed'))
      },
    }
  }

  seen(name: string, ttlMs: number): SeenSet {
    return {
      firstTime: (id) => this.seenStore.firstTime(`contract/${name}`, id, ttlMs),
      has: (id) => this.seenStore.has(`contract/${name}`, id),
      forget: (id) => this.seenStore.forget(`contract/${name}`, id),
    }
  }

  records<T>(name: string): RecordSet<T> {
    return this.recordStore.scoped<T>(`contract/${name}`)
  }

  /** Mapped devices reported reachable (true) or away (false), in order. */
  readonly reachability: { device: DeviceRef; reachable: boolean }[] = []

  deviceReachable(device: DeviceRef): void {
    this.reachability.push({ device, reachable: true })
  }

  deviceAway(device: DeviceRef): void {
    this.reachability.push({ device, reachable: false })
  }

  uplink(up: Uplink): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    this.uplinks.push(up)
    if (!this.held) return Promise.resolve()
    return new Promise((resolve) => this.held!.push(resolve))
  }

  holdUplinks(): void {
    this.held = []
  }

  async waitForHeld(n: number, timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs
    while ((this.held?.length ?? 0) < n) {
      if (Date.now() > until) throw new Error(`expected ${n} held uplinks, have ${this.held?.length ?? 0}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }

  releaseUplinks(): void {
    const held = this.held ?? []
    this.held = undefined
    for (const r of held) r()
  }

  failUplinks(err: Error | undefined): void {
    this.failure = err
  }

  intakeOpen(): boolean {
    return true
  }

  onIntakeChange(): void {}

  sessionOpened(s: ClientSession): void {
    this.sessions.opened.push(s)
  }

  sessionClosed(s: ClientSession): void {
    this.sessions.closed.push(s)
  }

  readonly tagEvents: { op: 'sub' | 'unsub'; clientId: string; filter: string }[] = []

  tagSubscribed(_device: DeviceRef, clientId: string, filter: string): void {
    this.tagEvents.push({ op: 'sub', clientId, filter })
  }

  tagUnsubscribed(clientId: string, filter: string): void {
    this.tagEvents.push({ op: 'unsub', clientId, filter })
  }

  readonly reports: { device: DeviceRef; reported: Record<string, unknown> }[] = []

  async reportState(device: DeviceRef, reported: Record<string, unknown>): Promise<void> {
    this.reports.push({ device, reported })
  }

  readonly replies: { cmd: Command; status: ReplyStatus }[] = []

  async replyFor(cmd: Command, status: ReplyStatus): Promise<void> {
    this.replies.push({ cmd, status })
  }

  /** No files served in the contract suites (the OTA tests serve real ones through the gateway). */
  localFile(): undefined {
    return undefined
  }

  /** Broker sessions in memory in the contract suites (broker-persistence*.test.ts test broker.db through the gateway). */
  brokerSessions(): undefined {
    return undefined
  }

  dispose(): void {
    this.db.close()
    rmSync(this.dir, { recursive: true, force: true })
  }
}
