// A line-protocol port: each line a device sends becomes one upload_data for the device it names
// (or the port's one device). Bad lines are counted by reason and logged at most once a minute per
// reason; the port carries on. Commands become lines written from a template; with `ack`, the
// device is acknowledged only once its reading is durable.
import type { AdapterContext } from '../../core/adapter-context.js'
import { RateLimitedLog } from '../../core/log.js'
import { COMMAND_NAME_PATTERN, ID_RULE, isId } from '../../core/hub-topics.js'
import { newMessageId } from '../../core/message-id.js'
import type { Command, DeliveryResult, DeviceRef } from '../../core/types.js'
import { deviceKey } from '../../core/types.js'
import { LineFramer, lineParser, type ParseResult } from './line-parsers.js'
import type { PortLink } from './port-link.js'
import type { PortConfig } from './schema.js'
import type { SerialMetrics } from './serial-metrics.js'

const DATA_TYPE = new RegExp(COMMAND_NAME_PATTERN)

/** `{key}` placeholders filled from `values`. */
function fill(template: string, values: Record<string, string>): string {
  return template.replace(/\{([A-Za-z0-9_]+)\}/g, (m, k: string) => values[k] ?? m)
}

export type LineRejectReason = 'garbage' | 'too_long' | 'not_utf8' | 'unknown_device' | 'no_values' | 'partial'

export class LinePort {
  readonly devices: Map<string, DeviceRef>
  readonly rejected: Record<LineRejectReason, number> = { garbage: 0, too_long: 0, not_utf8: 0, unknown_device: 0, no_values: 0, partial: 0 }
  lines = 0
  lastRejected: { reason: LineRejectReason; detail: string; at: number } | null = null
  private readonly framer: LineFramer
  private readonly parse: (line: string) => ParseResult
  private readonly rateLog: RateLimitedLog
  private readonly pending = new Set<Promise<void>>()

  constructor(
    private readonly cfg: PortConfig,
    private readonly link: PortLink,
    private readonly ctx: AdapterContext,
    private readonly metrics: SerialMetrics,
  ) {
    const ids = cfg.deviceId !== undefined ? [cfg.deviceId] : cfg.deviceIds
    this.devices = new Map(ids.map((deviceId) => [deviceKey({ productId: cfg.productId!, deviceId }), { productId: cfg.productId!, deviceId }]))
    this.parse = lineParser(cfg)
    this.rateLog = new RateLimitedLog(ctx.log)
    this.framer = new LineFramer(cfg.delimiter, cfg.maxLineBytes, { line: (l) => this.line(l), reject: (r, d) => this.reject(r, d) })
  }

  start(): void {
    this.link.on('data', (chunk) => this.framer.push(chunk))
    this.link.on('open', () => {
      for (const d of this.devices.values()) this.ctx.deviceReachable(d)
    })
    this.link.on('close', () => {
      // An unterminated line cut by the disconnect is not a reading.
      if (this.framer.reset() > 0) this.reject('partial', 'cut off by a disconnect')
      for (const d of this.devices.values()) this.ctx.deviceAway(d)
    })
  }

  /** Finish the uploads in flight. */
  async stop(): Promise<void> {
    await Promise.all([...this.pending])
  }

  private reject(reason: LineRejectReason, detail: string): void {
    this.rejected[reason]++
    this.lastRejected = { reason, detail, at: Date.now() }
    this.metrics.linesRejected.inc({ port: this.cfg.name, reason })
    this.rateLog.warn(`${this.cfg.name}:${reason}`, { port: this.cfg.name, reason, detail }, `serial line skipped (${reason})`)
  }

  private line(text: string): void {
    const parsed = this.parse(text)
    if (!parsed.ok) return this.reject(parsed.reason, `${parsed.detail}: ${text.slice(0, 80)}`)
    const fields = { ...parsed.fields }
    let deviceId = this.cfg.deviceId
    if (this.cfg.deviceField !== undefined) {
      const named = fields[this.cfg.deviceField]
      delete fields[this.cfg.deviceField]
      deviceId = named === undefined ? undefined : String(named)
    }
    const device = deviceId === undefined ? undefined : this.devices.get(deviceKey({ productId: this.cfg.productId!, deviceId }))
    if (!device) return this.reject('unknown_device', `device ${deviceId ?? '(none)'} is not in deviceIds`)
    let dataType = this.cfg.dataType
    if (this.cfg.dataTypeField !== undefined && fields[this.cfg.dataTypeField] !== undefined) {
      dataType = String(fields[this.cfg.dataTypeField])
      delete fields[this.cfg.dataTypeField]
      // A device names data, never the protocol's internal `$` types.
      if (!DATA_TYPE.test(dataType)) return this.reject('garbage', `DataType ${JSON.stringify(dataType).slice(0, 40)} is not allowed (${COMMAND_NAME_PATTERN})`)
    }
    const now = Date.now()
    let messageId = newMessageId(now)
    if (this.cfg.messageIdField !== undefined && fields[this.cfg.messageIdField] !== undefined) {
      const own = String(fields[this.cfg.messageIdField])
      delete fields[this.cfg.messageIdField]
      if (!isId(own)) return this.reject('garbage', `MessageId ${JSON.stringify(own).slice(0, 40)} is not ${ID_RULE}`)
      messageId = own
    }
    if (Object.keys(fields).length === 0) return this.reject('no_values', text.slice(0, 80))
    if (!this.ctx.intakeOpen()) {
      this.metrics.readingsRefused.inc({ port: this.cfg.name, device: deviceKey(device) })
      return
    }
    this.lines++
    this.metrics.lines.inc({ port: this.cfg.name })
    const up = this.ctx.uplink({
      topic: { kind: 'upload_data', productId: device.productId, deviceId: device.deviceId, name: dataType, messageId },
      payload: Buffer.from(JSON.stringify(fields)),
      transport: 'serial',
      receivedAt: now,
      meta: { port: this.cfg.path },
    })
    const ack = this.cfg.ack
    const done = up.then(
      // The device is acknowledged only once its reading is durable (DESIGN.md "Durability rules").
      () => (ack === undefined ? undefined : this.writeAck(fill(ack, { messageId, deviceId: device.deviceId, dataType }))),
      (err: unknown) => {
      this.metrics.readingsRefused.inc({ port: this.cfg.name, device: deviceKey(device) })
      this.rateLog.warn(`${this.cfg.name}:store`, { err, port: this.cfg.name }, 'a serial reading could not be stored; it is dropped')
      },
    )
    this.pending.add(done)
    void done.finally(() => this.pending.delete(done))
  }

  private async writeAck(line: string): Promise<void> {
    try {
      await this.link.write(Buffer.from(line + this.cfg.delimiter, 'utf8'))
    } catch (err) {
      this.rateLog.warn(`${this.cfg.name}:ack`, { err, port: this.cfg.name }, 'an acknowledgement could not be written; the device may resend (the hub drops it by its MessageId)')
    }
  }

  /** A command for one of this port's devices: its template, filled from the payload, written as a line. */
  async deliver(cmd: Command): Promise<DeliveryResult> {
    if (!this.link.isOpen) return 'offline'
    if (cmd.name.startsWith('$') || cmd.type === 'm2m') {
      this.metrics.commandsIgnored.inc({ port: this.cfg.name, device: deviceKey(cmd.device), command: cmd.name.startsWith('$') ? cmd.name : 'm2m' })
      return 'delivered'
    }
    const c = this.cfg.commands[cmd.name]
    if (!c) {
      await this.ctx.replyFor(cmd, 'failed', { reason: `unknown command ${cmd.name} (configured: ${Object.keys(this.cfg.commands).join(', ') || 'none'})`, code: 'unknown_command' })
      return 'delivered'
    }
    let body: Record<string, unknown> = {}
    if (cmd.payload.length > 0) {
      try {
        const v = JSON.parse(cmd.payload.toString('utf8')) as unknown
        if (typeof v === 'object' && v !== null && !Array.isArray(v)) body = v as Record<string, unknown>
      } catch {
        await this.ctx.replyFor(cmd, 'failed', { reason: 'the payload must be a JSON object', code: 'bad_payload' })
        return 'delivered'
      }
    }
    const missing: string[] = []
    const own: Record<string, string> = { deviceId: cmd.device.deviceId, requestId: cmd.requestId, command: cmd.name, payload: cmd.payload.toString('utf8') }
    const line = c.template.replace(/\{([A-Za-z0-9_]+)\}/g, (_, k: string) => {
      if (own[k] !== undefined) return own[k]
      if (body[k] === undefined) missing.push(k)
      return String(body[k] ?? '')
    })
    if (missing.length > 0) {
      await this.ctx.replyFor(cmd, 'failed', { reason: `the payload lacks ${missing.join(', ')}`, code: 'bad_payload' })
      return 'delivered'
    }
    try {
      await this.link.write(Buffer.from(line + this.cfg.delimiter, 'utf8'))
    } catch {
      return 'offline'
    }
    // A line-protocol device does not confirm: the reply says the line went out.
    await this.ctx.replyFor(cmd, 'sent')
    return 'delivered'
  }
}
