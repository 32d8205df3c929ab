// Down: every command for a child passes through here once. It is dropped when expired or seen
// before, made durable (queued, or at least recorded as seen) before the hub gets its PUBACK, and
// handed to the adapter that owns the device, in order, one at a time per device. A command for a
// device that is offline waits until the device comes back or the command expires; an RPC never
// waits (the hub stops waiting after ~5 s anyway).
import { EventEmitter } from 'node:events'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import type { Command, DeviceRef, SouthboundAdapter } from './types.js'
import { deviceKey, isExpired } from './types.js'
import type { CommandOrigin, CommandStore, StoredCommand } from '../store/commands.js'
import type { CommandHold, HeldCommands } from './command-hold.js'
import { isDamagedDatabase } from './damaged-file.js'

export interface RouterDeps {
  store: CommandStore
  /** The adapter that is the route to a device now, if any. */
  owner: (device: DeviceRef) => SouthboundAdapter | undefined
  log: Logger
  metrics: Metrics
  /** How long a seen RequestId is remembered (store.commands.seenTtlSeconds). */
  seenTtlMs: number
  /** The command queue's database answered "damaged" (decision 0014-damaged-store): the gateway ends so that the next start salvages. */
  storeDamaged?: (err: Error) => void
}

/** Events: 'delivered' (StoredCommand), 'reply' ({command: StoredCommand, payload}). */
export class CommandRouter extends EventEmitter implements HeldCommands {
  private readonly chains = new Map<string, Promise<void>>()
  private hold?: CommandHold
  private readonly replyWaiters = new Map<string, (payload: Buffer) => void>()
  private stopped = false

  constructor(private readonly d: RouterDeps) {
    super()
  }

  private owner(device: DeviceRef): SouthboundAdapter | undefined {
    return this.d.owner(device)
  }

  isExpired(cmd: Command, now = Date.now()): boolean {
    return isExpired(cmd, now)
  }

  /**
   * A command from the hub (or a tag fan-out, or a local m2m). Synchronous up to durability: when it
   * returns, the command is stored (or known to be a duplicate/expired) and the sender may be
   * acknowledged. Delivery runs afterwards.
   */
  accept(cmd: Command, origin: CommandOrigin, scope = deviceKey(cmd.device)): 'queued' | 'duplicate' | 'expired' | 'rpc_sent' | 'rpc_offline' {
    if (this.isExpired(cmd)) {
      this.d.metrics.downlinks.inc({ outcome: 'expired' })
      this.d.store.accept(scope, cmd, origin) // an expired id is seen too: a late redelivery stays dropped
      return 'expired'
    }
    if (cmd.type === 'rpc') {
      const r = this.d.store.accept(scope, cmd, origin, 'queued')
      if (!r.fresh) return this.duplicate(cmd)
      // Not queued: delivered now or never.
      if (!this.owner(cmd.device)) {
        this.d.store.setState(r.id!, 'dropped', 'device offline')
        this.d.metrics.downlinks.inc({ outcome: 'offline' })
        return 'rpc_offline'
      }
      this.schedule(cmd.device)
      return 'rpc_sent'
    }
    const held = this.hold?.takes(cmd, origin) === true
    const r = this.d.store.accept(scope, cmd, origin, held ? 'held' : 'queued')
    if (!r.fresh) return this.duplicate(cmd)
    if (held) this.handToHold(r.id!)
    else this.schedule(cmd.device)
    return 'queued'
  }

  /** Record a fan-out copy (its scope, e.g. the tag topic, was deduplicated already) and deliver it. */
  enqueueCopy(cmd: Command, origin: CommandOrigin): void {
    const held = this.hold?.takes(cmd, origin) === true
    const id = this.d.store.record(cmd, origin, held ? 'held' : 'queued')
    if (held) this.handToHold(id)
    else this.schedule(cmd.device)
  }

  /** Plug in the one command hold (src/core/command-hold.ts); it gets what is still held from before. */
  setHold(hold: CommandHold | undefined): void {
    this.hold = hold
    if (hold) for (const sc of this.d.store.held()) hold.held(sc)
  }

  // After the current turn: a fan-out writes its copies in one transaction, which must be
  // committed before the hold acts on one of them.
  private handToHold(id: number): void {
    setImmediate(() => {
      const sc = this.d.store.byId(id)
      if (sc?.state === 'held') this.hold?.held(sc)
    })
  }

  release(id: number, payload: Buffer): boolean {
    if (!this.d.store.release(id, payload)) return false
    const sc = this.d.store.byId(id)
    if (sc) this.schedule(sc.command.device)
    return true
  }

  finish(id: number, state: 'failed' | 'expired' | 'dropped', reason: string): void {
    this.d.store.setState(id, state, reason)
    this.d.metrics.downlinks.inc({ outcome: state })
  }

  heldCommands(): StoredCommand[] {
    return this.d.store.held()
  }

  private duplicate(cmd: Command): 'duplicate' {
    this.d.metrics.downlinks.inc({ outcome: 'duplicate' })
    this.d.log.debug({ device: deviceKey(cmd.device), requestId: cmd.requestId }, 'duplicate command dropped')
    return 'duplicate'
  }

  /** A device came online (or a mapped device woke up): deliver what waits for it. */
  deviceOnline(device: DeviceRef): void {
    this.schedule(device)
  }

  /**
   * A message that is worthless late (the QoS 0 internals from the hub): handed to the device in
   * turn with its commands if an adapter owns it, dropped otherwise; never queued.
   */
  relay(cmd: Command): void {
    // What waited for the device before this arrived goes first (a device that has just come back
    // gets its queue before what the hub sends on its arrival), and only that: what the hub sends
    // after it comes after it.
    const key = deviceKey(cmd.device)
    const upTo = this.d.store.lastPendingId(key)
    if (upTo !== undefined) this.chain(cmd.device, () => this.flush(key, upTo))
    this.chain(cmd.device, async () => {
      const adapter = this.owner(cmd.device)
      if (adapter) await adapter.deliver(cmd)
    })
  }

  // One delivery chain per device keeps what it is sent in order.
  private schedule(device: DeviceRef): void {
    this.chain(device, () => this.flush(deviceKey(device)))
  }

  private chain(device: DeviceRef, task: () => Promise<void>): void {
    const key = deviceKey(device)
    const prev = this.chains.get(key) ?? Promise.resolve()
    const next = prev.then(task).catch((err: Error) => {
      // A damaged page of the queue fails every delivery to this device from now on: not a delivery problem.
      if (isDamagedDatabase(err) && this.d.storeDamaged) return this.d.storeDamaged(err)
      this.d.log.warn({ err: err.message, device: key }, 'command delivery failed')
    })
    this.chains.set(key, next)
    void next.then(() => {
      if (this.chains.get(key) === next) this.chains.delete(key)
    })
  }

  /** Deliver what is queued for the device, in order (only up to `upTo` when given). */
  private async flush(key: string, upTo = Infinity): Promise<void> {
    for (const sc of this.d.store.pending(key)) {
      if (this.stopped || sc.id > upTo) return
      if (this.isExpired(sc.command)) {
        this.d.store.setState(sc.id, 'expired')
        this.d.metrics.downlinks.inc({ outcome: 'expired' })
        continue
      }
      const adapter = this.owner(sc.command.device)
      if (!adapter) {
        if (sc.command.type === 'rpc') this.d.store.setState(sc.id, 'dropped', 'device offline')
        else return // stays queued until the device is back, in order
        continue
      }
      const result = await adapter.deliver(sc.command)
      if (result === 'delivered') {
        this.d.store.setState(sc.id, 'delivered')
        this.d.metrics.downlinks.inc({ outcome: 'delivered' })
        this.emit('delivered', sc)
      } else if (this.isExpired(sc.command)) {
        // It expired while the adapter held it (waiting for a sleepy device): not sent, and the rest goes on.
        this.d.store.setState(sc.id, 'expired')
        this.d.metrics.downlinks.inc({ outcome: 'expired' })
      } else if (sc.command.type === 'rpc') {
        this.d.store.setState(sc.id, 'dropped', 'device offline')
        this.d.metrics.downlinks.inc({ outcome: 'offline' })
      } else {
        return // the device went away mid-flush: the rest waits, in order
      }
    }
  }

  /**
   * A device replied (cmd_resp/rpc_resp). Returns true when the command was the gateway's own
   * (from the local API or a local rule): such replies stay local and do not go to the hub.
   */
  reply(device: DeviceRef, requestId: string, payload: Buffer): boolean {
    const sc = this.d.store.byRequest(deviceKey(device), requestId)
    if (!sc) return false
    this.d.store.setReply(sc.id, payload)
    this.emit('reply', { command: sc, payload })
    const waiter = this.replyWaiters.get(`${deviceKey(device)} ${requestId}`)
    waiter?.(payload)
    return sc.origin === 'local' || sc.origin === 'rule'
  }

  /** Wait for the reply to a locally issued command. */
  waitForReply(device: DeviceRef, requestId: string, timeoutMs: number): Promise<Buffer | undefined> {
    const k = `${deviceKey(device)} ${requestId}`
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.replyWaiters.delete(k)
        resolve(undefined)
      }, timeoutMs)
      this.replyWaiters.set(k, (p) => {
        clearTimeout(timer)
        this.replyWaiters.delete(k)
        resolve(p)
      })
    })
  }

  history(device: DeviceRef, limit?: number): StoredCommand[] {
    // A command whose ExpiresAt passed while its device was away shows as expired now, not only at
    // the next sweep or when the device comes back.
    const expired = this.d.store.expireDue()
    if (expired) this.d.metrics.downlinks.inc({ outcome: 'expired' }, expired)
    return this.d.store.recent(deviceKey(device), limit)
  }

  sweep(devices: string[]): void {
    const expired = this.d.store.sweep(this.d.seenTtlMs, devices)
    if (expired) this.d.metrics.downlinks.inc({ outcome: 'expired' }, expired)
  }

  async stop(): Promise<void> {
    this.stopped = true
    await Promise.allSettled([...this.chains.values()])
  }
}
