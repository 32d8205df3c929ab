// Observers watch the flow without driving it (STYLE.md: "an observer bus may watch the flow, never
// drive it"). The local history is one: it is told what the outbox committed and what happened to
// commands, after the fact, and can neither delay nor refuse anything. A failing observer is
// logged and the flow carries on.
import type { Logger } from './log.js'
import { RateLimitedLog } from './log.js'
import type { DeviceRef, Uplink } from './types.js'

/**
 * Something that happened to a device besides its uplinks (commands; errors the log named it in;
 * sessions arrive as `$connection` uplinks, alarms as the rules' `alarm` uplinks).
 */
export interface DeviceEvent {
  device: DeviceRef
  /** Milliseconds since the epoch. */
  at: number
  type: 'command_delivered' | 'command_replied' | 'error'
  detail: Record<string, string | number | boolean | null>
}

export interface PipelineObserver {
  /**
   * Uplinks durable in the outbox, one call per group commit, in commit order. Called in the turn of
   * the commit: keep the reference and return at once (do the work later, off the hot path).
   */
  committed?(batch: readonly Uplink[]): void
  /** A command reached its device, or the device replied to one. */
  deviceEvent?(event: DeviceEvent): void
}

/** The observers the core tells; `observe()` returns the function that stops telling one. */
export class Observers {
  private readonly list: PipelineObserver[] = []
  private readonly warn: RateLimitedLog

  constructor(log: Logger) {
    this.warn = new RateLimitedLog(log)
  }

  get any(): boolean {
    return this.list.length > 0
  }

  observe(o: PipelineObserver): () => void {
    this.list.push(o)
    return () => {
      const i = this.list.indexOf(o)
      if (i >= 0) this.list.splice(i, 1)
    }
  }

  committed(batch: readonly Uplink[]): void {
    for (const o of this.list) this.tell(() => o.committed?.(batch))
  }

  deviceEvent(event: DeviceEvent): void {
    for (const o of this.list) this.tell(() => o.deviceEvent?.(event))
  }

  // An observer runs inside the outbox's commit turn: a throw there would escape into the event loop.
  private tell(f: () => void): void {
    try {
      f()
    } catch (err) {
      this.warn.warn('observer', { err }, 'an observer of the pipeline failed; the pipeline carries on without what it missed')
    }
  }
}
