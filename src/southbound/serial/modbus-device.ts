// One Modbus slave as a hub device: polled on its interval (one upload_data per poll with the named,
// scaled values), reachable from its first answer and away after N failed polls in a row, written
// to by hub commands and shadow desired state, its `reported` registers mirrored to the shadow.
import type { AdapterContext } from '../../core/adapter-context.js'
import { newMessageId } from '../../core/message-id.js'
import type { Command, DeliveryResult, DeviceRef } from '../../core/types.js'
import { answerBits, answerWords, readRequest, writeCoilsRequest, writeRegistersRequest } from './modbus-frame.js'
import type { ModbusMaster, Outcome } from './modbus-master.js'
import { decode, encode, planReads, type ReadBlock } from './register-map.js'
import type { ModbusDeviceConfig, PortConfig, RegisterConfig } from './schema.js'
import type { SerialMetrics } from './serial-metrics.js'

export interface DeviceCounters {
  polls: number
  failedPolls: number
  timeouts: number
  crcErrors: number
  exceptions: number
  writes: number
  failedWrites: number
}

type Values = Record<string, number | boolean>

/** The outcome of one write, as the command reply says it. */
export type WriteResult = { ok: true } | { ok: false; retry: boolean; reason: string; code: number | string }

export const APPLY_DESIRED = '$update_shadow'

export class ModbusDevice {
  readonly ref: DeviceRef
  readonly counters: DeviceCounters = { polls: 0, failedPolls: 0, timeouts: 0, crcErrors: 0, exceptions: 0, writes: 0, failedWrites: 0 }
  reachable = false
  lastValues: Values = {}
  lastPollAt: number | null = null
  lastError: string | null = null
  private readonly blocks: ReadBlock[]
  private readonly byName: Map<string, RegisterConfig>
  private failedInRow = 0
  private reported: Values = {}
  // Report by exception: the values last sent and when everything was last sent (the heartbeat).
  private readonly sent: Values = {}
  private lastSentAt: number | null = null
  private timer?: NodeJS.Timeout
  private running = false
  private polling?: Promise<void>
  // Problems already logged (bad register, refused upload): logged once until they clear.
  private readonly logged = new Set<string>()

  constructor(
    readonly cfg: ModbusDeviceConfig,
    private readonly port: PortConfig,
    private readonly master: ModbusMaster,
    private readonly ctx: AdapterContext,
    private readonly metrics: SerialMetrics,
  ) {
    this.ref = { productId: cfg.productId, deviceId: cfg.deviceId }
    this.blocks = planReads(cfg.registers)
    this.byName = new Map(cfg.registers.map((r) => [r.name, r]))
  }

  private get labels(): { port: string; device: string } {
    return { port: this.port.name, device: `${this.cfg.productId}/${this.cfg.deviceId}` }
  }

  start(): void {
    this.running = true
    this.schedule(0)
  }

  async stop(): Promise<void> {
    this.running = false
    clearTimeout(this.timer)
    await this.polling
  }

  /** Poll now rather than at the next interval (after a write, so the shadow sees the new value soon). */
  pollSoon(): void {
    if (this.running) this.schedule(0)
  }

  /** The bus went away (port lost): the device cannot be reached until it answers again. */
  busLost(): void {
    this.failedInRow = this.port.awayAfterFailedPolls
    this.setReachable(false)
  }

  /** Per-attempt events from the master. */
  attempt(e: 'timeout' | 'crc' | 'mismatch' | 'exception' | 'answer'): void {
    if (e === 'timeout') {
      this.counters.timeouts++
      this.metrics.timeouts.inc(this.labels)
    } else if (e === 'crc' || e === 'mismatch') {
      this.counters.crcErrors++
      this.metrics.crcErrors.inc(this.labels)
    } else if (e === 'exception') {
      this.counters.exceptions++
      this.metrics.exceptions.inc(this.labels)
    }
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      // One poll at a time per device; the next is scheduled when it ends.
      if (this.polling) return
      this.polling = this.poll().finally(() => {
        this.polling = undefined
        if (this.running) this.schedule(this.cfg.pollIntervalMs)
      })
    }, ms)
  }

  private async poll(): Promise<void> {
    const values: Values = {}
    let answered = false
    let failure: string | null = null
    for (const block of this.blocks) {
      const outcome = await this.master.transact(readRequest(this.cfg.unitId, block.table, block.address, block.count))
      if (!this.running) return
      if (outcome.kind === 'ok') {
        answered = true
        const bits = block.table === 'coil' || block.table === 'discrete' ? answerBits(outcome.frame, block.count) : null
        const words = bits ? null : answerWords(outcome.frame)
        for (const r of block.registers) values[r.name] = decode(r, block, words, bits)
      } else if (outcome.kind === 'exception') {
        // The slave is there but refuses this block (often a wrong address in the map): the other
        // values still go up; the problem is logged once per block.
        answered = true
        this.once(`exc:${block.table}:${block.address}`, () =>
          this.ctx.log.warn(
            { port: this.port.name, unitId: this.cfg.unitId, device: this.labels.device, table: block.table, address: block.address, count: block.count, code: outcome.code },
            `modbus exception ${outcome.code} (${outcome.message}) reading registers ${block.registers.map((r) => r.name).join(', ')}; check the register map`,
          ),
        )
      } else {
        failure = describe(outcome)
        break
      }
    }
    this.counters.polls++
    this.metrics.polls.inc(this.labels)
    this.lastPollAt = Date.now()
    if (failure !== null || !answered) {
      this.counters.failedPolls++
      this.metrics.failedPolls.inc(this.labels)
      this.lastError = failure ?? 'no answer'
      this.failedInRow++
      if (this.failedInRow >= this.port.awayAfterFailedPolls) this.setReachable(false)
      return
    }
    this.failedInRow = 0
    this.lastError = null
    this.lastValues = values
    this.setReachable(true)
    const toSend = this.worthSending(values)
    if (Object.keys(toSend).length > 0) await this.upload(toSend)
    await this.reportChanged(values)
  }

  /**
   * What of a poll goes up: everything, or with reportByException the values that moved beyond their
   * deadband since they were last sent, and everything again once per heartbeat.
   */
  private worthSending(values: Values): Values {
    const rbe = this.cfg.reportByException
    const now = Date.now()
    if (!rbe || this.lastSentAt === null || now - this.lastSentAt >= rbe.heartbeatMs) {
      if (Object.keys(values).length > 0) this.lastSentAt = now
      Object.assign(this.sent, values)
      return values
    }
    const changed: Values = {}
    for (const [name, v] of Object.entries(values)) {
      const before = this.sent[name]
      const band = this.byName.get(name)?.deadband ?? rbe.deadband
      const moved = typeof v === 'number' && typeof before === 'number' ? Math.abs(v - before) > band : v !== before
      if (moved) changed[name] = v
    }
    Object.assign(this.sent, changed)
    if (Object.keys(changed).length === 0) this.metrics.unchangedPolls.inc(this.labels)
    return changed
  }

  private async upload(values: Values): Promise<void> {
    if (!this.ctx.intakeOpen()) {
      this.metrics.readingsRefused.inc(this.labels)
      return
    }
    const now = Date.now()
    try {
      await this.ctx.uplink({
        topic: { kind: 'upload_data', productId: this.cfg.productId, deviceId: this.cfg.deviceId, name: this.cfg.dataType, messageId: newMessageId(now) },
        payload: Buffer.from(JSON.stringify(values)),
        transport: 'serial',
        receivedAt: now,
        meta: { port: this.port.path, unitId: this.cfg.unitId },
      })
      this.logged.delete('upload')
    } catch (err) {
      this.metrics.readingsRefused.inc(this.labels)
      this.once('upload', () => this.ctx.log.warn({ err, device: this.labels.device }, 'a modbus reading could not be stored; it is dropped'))
    }
  }

  private async reportChanged(values: Values): Promise<void> {
    const changed: Values = {}
    for (const name of this.cfg.shadow.reported) {
      const v = values[name]
      if (v !== undefined && this.reported[name] !== v) changed[name] = v
    }
    if (Object.keys(changed).length === 0) return
    try {
      await this.ctx.reportState(this.ref, changed)
      Object.assign(this.reported, changed)
    } catch (err) {
      this.once('report', () => this.ctx.log.warn({ err, device: this.labels.device }, 'reporting modbus values to the shadow failed; retried on the next poll'))
    }
  }

  private setReachable(reachable: boolean): void {
    if (reachable === this.reachable) return
    this.reachable = reachable
    if (reachable) this.ctx.deviceReachable(this.ref)
    else this.ctx.deviceAway(this.ref)
    // Not answering is a problem of this device (a warning names it: its error count and timeline).
    if (reachable) this.ctx.log.info({ port: this.port.name, unitId: this.cfg.unitId, device: this.labels.device, reachable }, 'modbus device answers')
    else this.ctx.log.warn({ port: this.port.name, unitId: this.cfg.unitId, device: this.labels.device, reachable, err: this.lastError }, `modbus device does not answer (${this.lastError ?? 'no answer'}); check its wiring, unit id and the port's settings`)
  }

  /** Write one register (engineering units); resolves once the slave confirmed. */
  async write(name: string, value: unknown): Promise<WriteResult> {
    const r = this.byName.get(name)
    if (!r || !r.writable) return { ok: false, retry: false, reason: `${name} is not a writable register`, code: 'not_writable' }
    let enc: ReturnType<typeof encode>
    try {
      enc = encode(r, value)
    } catch (err) {
      return this.failedWrite({ ok: false, retry: false, reason: (err as Error).message, code: 'bad_value' })
    }
    const req = 'bits' in enc ? writeCoilsRequest(this.cfg.unitId, r.address, enc.bits) : writeRegistersRequest(this.cfg.unitId, r.address, enc.words)
    const outcome = await this.master.transact(req)
    if (outcome.kind === 'ok') {
      this.counters.writes++
      this.metrics.writes.inc({ ...this.labels, result: 'ok' })
      this.pollSoon()
      return { ok: true }
    }
    if (outcome.kind === 'exception') return this.failedWrite({ ok: false, retry: false, reason: `modbus exception: ${outcome.message}`, code: outcome.code })
    return this.failedWrite({ ok: false, retry: true, reason: describe(outcome), code: outcome.kind === 'port_closed' ? 'port_closed' : outcome.reason })
  }

  private failedWrite(res: WriteResult & { ok: false }): WriteResult {
    this.counters.failedWrites++
    this.metrics.writes.inc({ ...this.labels, result: 'failed' })
    return res
  }

  /** A command for this device (the adapter checked it owns the device). */
  async deliver(cmd: Command): Promise<DeliveryResult> {
    if (!this.reachable) return 'offline'
    if (cmd.name === APPLY_DESIRED) return this.applyDesired(cmd)
    if (cmd.name.startsWith('$') || cmd.type === 'm2m') {
      // The protocol's own commands ($set_tags, $set_ntp...) mean nothing to a Modbus slave.
      this.metrics.commandsIgnored.inc({ ...this.labels, command: cmd.name.startsWith('$') ? cmd.name : 'm2m' })
      return 'delivered'
    }
    const mapped = this.cfg.commands[cmd.name]
    if (!mapped) {
      await this.ctx.replyFor(cmd, 'failed', { reason: `unknown command ${cmd.name} (configured: ${Object.keys(this.cfg.commands).join(', ') || 'none'})`, code: 'unknown_command' })
      return 'delivered'
    }
    let value: unknown
    try {
      const text = cmd.encoding === 'base64' ? Buffer.from(cmd.payload.toString('utf8'), 'base64').toString('utf8') : cmd.payload.toString('utf8')
      const body = JSON.parse(text) as unknown
      if (typeof body !== 'object' || body === null || !('value' in body)) throw new Error('the payload must be {"value": ...}')
      value = (body as { value: unknown }).value
    } catch (err) {
      await this.ctx.replyFor(cmd, 'failed', { reason: `bad payload: ${(err as Error).message}`, code: 'bad_payload' })
      return 'delivered'
    }
    const res = await this.write(mapped.register, value)
    // Nothing was confirmed (timeout, port gone): the command stays queued for when the slave answers again.
    if (!res.ok && res.retry) return 'offline'
    if (res.ok) await this.ctx.replyFor(cmd, 'ok')
    else await this.ctx.replyFor(cmd, 'failed', { reason: res.reason, code: res.code })
    return 'delivered'
  }

  /**
   * `$update_shadow` {desired, version}: each key that names a register in `shadow.desired` is
   * written; 'delivered' once the slave confirmed every write. A write the slave refuses (an
   * exception, a value out of range) is logged and counted and not retried: the next poll reports
   * what the register really holds, which corrects the shadow when the key is also `reported`.
   */
  private async applyDesired(cmd: Command): Promise<DeliveryResult> {
    let desired: Record<string, unknown>
    try {
      const body = JSON.parse(cmd.payload.toString('utf8')) as { desired?: unknown }
      if (typeof body.desired !== 'object' || body.desired === null) throw new Error('no desired object')
      desired = body.desired as Record<string, unknown>
    } catch (err) {
      this.ctx.log.warn({ err, device: this.labels.device }, 'an $update_shadow without a usable desired state was ignored')
      return 'delivered'
    }
    for (const [key, value] of Object.entries(desired)) {
      // null removes a key from the desired state: there is nothing to write.
      if (value === null) continue
      if (!this.cfg.shadow.desired.includes(key)) {
        this.metrics.shadowKeysIgnored.inc(this.labels)
        this.once(`shadow-key:${key}`, () => this.ctx.log.warn({ device: this.labels.device, key }, `shadow desired key ${key} is not in shadow.desired of this device; ignored`))
        continue
      }
      const res = await this.write(key, value)
      if (!res.ok && res.retry) return 'offline'
      if (!res.ok) this.ctx.log.warn({ device: this.labels.device, key, value, reason: res.reason, code: res.code }, 'the slave refused a shadow desired value')
    }
    return 'delivered'
  }

  private once(key: string, log: () => void): void {
    if (this.logged.has(key)) return
    this.logged.add(key)
    log()
  }
}

function describe(o: Exclude<Outcome, { kind: 'ok' } | { kind: 'exception' }>): string {
  if (o.kind === 'port_closed') return 'port closed'
  return o.reason === 'timeout' ? 'no answer (timeout)' : o.reason === 'crc' ? 'corrupt answer (CRC)' : 'answer did not fit the request'
}
