// The live stream's events, made from the gateway's own seams (the composition root wires them):
// committed uplinks (the core's observer seam) become `uplink`, `device` ($connection sessions) and
// `alarm` (the rules' alarm changes) events; command state changes (the command store's watcher)
// become `command`; log lines (the log ring) become `log`. Every source first asks whether anyone
// listens, so with no client the cost per message is one boolean test.
import { levels } from 'pino'
import type { PipelineObserver } from '../core/observers.js'
import type { Uplink } from '../core/types.js'
import { payloadView, type RecentMessage } from './device-activity.js'

export type LiveEventName = 'device' | 'uplink' | 'alarm' | 'command' | 'log'

export interface LiveSink {
  readonly listening: boolean
  publish(type: LiveEventName, data: unknown): void
}

/** What the `command` event says about a stored command. */
export interface CommandChange {
  productId: string
  deviceId: string
  requestId: string
  name: string
  type: string
  origin: string
  state: string
  reason: string | null
  updatedAt: number
}

export interface LiveEventDeps {
  sink: LiveSink
  /** The rules' alarm as GET /api/alarms shows it, for an alarm change that was committed. */
  alarm?: (rule: string, alarm: string, productId: string, deviceId: string) => unknown
  /** A command by its store id, read only while someone listens. */
  command: (id: number) => CommandChange | undefined
}

// pino's own fields, left out of the `log` event's fields (they are constant per process).
const LOG_NOISE = new Set(['pid', 'hostname', 'name'])

export class LiveEvents implements PipelineObserver {
  constructor(private readonly d: LiveEventDeps) {}

  /** Committed uplinks (PipelineObserver): in the commit's turn, and only while someone listens. */
  committed(batch: readonly Uplink[]): void {
    if (!this.d.sink.listening) return
    for (const up of batch) this.uplink(up)
  }

  /** The command store's watcher. */
  readonly commandChanged = (id: number): void => {
    if (!this.d.sink.listening) return
    const c = this.d.command(id)
    if (c) this.d.sink.publish('command', c)
  }

  /** The log ring's listener. */
  readonly logLine = (line: string, level: number): void => {
    if (!this.d.sink.listening) return
    let o: Record<string, unknown>
    try {
      o = JSON.parse(line) as Record<string, unknown>
    } catch {
      return
    }
    for (const k of LOG_NOISE) delete o[k]
    this.d.sink.publish('log', { ...o, level, levelName: levelName(level), msg: String(o.msg ?? '') })
  }

  private uplink(up: Uplink): void {
    const t = up.topic
    const device = { productId: t.productId, deviceId: t.deviceId }
    if (t.kind === 'upload_data' && t.name === '$connection') {
      const p = payloadView(up.payload) as { connected?: unknown }
      this.d.sink.publish('device', { ...device, online: p?.connected === true, lastSeen: up.receivedAt })
      return
    }
    if (t.kind !== 'upload_data' && t.kind !== 'update_status' && t.kind !== 'update_ota_status') return
    const payload = up.payload.length > 16 * 1024 ? { omitted: true, bytes: up.payload.length } : payloadView(up.payload)
    const event: RecentMessage & { productId: string; deviceId: string; transport: string; meta?: unknown } = {
      ...device,
      messageId: t.messageId,
      kind: t.kind,
      dataType: t.kind === 'upload_data' ? (t.name ?? null) : null,
      ts: up.receivedAt,
      transport: up.transport,
      payload,
      ...(up.meta ? { meta: up.meta } : {}),
    }
    this.d.sink.publish('uplink', event)
    // A rule's alarm change is an uplink the gateway made (transport internal, DataType `alarm`).
    if (t.kind === 'upload_data' && t.name === 'alarm' && up.transport === 'internal' && this.d.alarm) {
      const a = payload as { rule?: unknown; alarm?: unknown }
      if (typeof a?.rule === 'string' && typeof a.alarm === 'string') {
        this.d.sink.publish('alarm', this.d.alarm(a.rule, a.alarm, t.productId, t.deviceId) ?? { ...device, ...a })
      }
    }
  }
}

const levelName = (level: number): string => levels.labels[level] ?? String(level)
