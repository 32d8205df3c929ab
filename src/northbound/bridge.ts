// The northbound bridge: drains the outbox to the cloud hub and hands what the hub sends to the
// core. `gateway` mode uses one connection with the gateway's credentials;
// `devices` mode one per child with the child's own (DESIGN.md, "Northbound modes").
import { readFileSync } from 'node:fs'
import type { Config } from '../config.js'
import type { Logger } from '../core/log.js'
import type { Metrics } from '../core/metrics.js'
import type { DeviceRef } from '../core/types.js'
import { deviceKey } from '../core/types.js'
import type { Outbox, OutboxRow } from '../store/outbox.js'
import type { DeviceRegistry } from '../store/devices.js'
import { HubLink, type HeldSubscriptions, type HubLinkOptions } from './hub-link.js'
import type { BridgeStatus } from '../core/link-types.js'

export type { BridgeStatus } from '../core/link-types.js'
import { DrainRate, type DrainRateView } from './drain-rate.js'
import { serverSideSubscriptions } from '../core/hub-topics.js'

export interface BridgeHooks {
  /** A message from the hub; the hub gets its PUBACK once this resolves. */
  onMessage: (topic: string, payload: Buffer) => Promise<void>
  /** The gateway's own link (re)connected. */
  onConnected: () => void
  /** Further filters to hold on the hub (tag topics): all of them, or one child's in devices mode. */
  extraSubscriptions: (device?: DeviceRef) => string[]
  /** Durable record of what each link (by key) holds on the hub. */
  heldSubscriptions?: (linkKey: string) => HeldSubscriptions
}


export class Bridge {
  private readonly links = new Map<string, HubLink>()
  private readonly log: Logger
  private readonly gatewayKey: string
  // Acknowledgements of links that were removed (devices mode), so the running total never falls.
  private retiredAcked = 0
  private readonly drain = new DrainRate(() => {
    let n = this.retiredAcked
    for (const l of this.links.values()) n += l.acked
    return n
  })

  constructor(
    private readonly cfg: Config,
    private readonly outbox: Outbox,
    private readonly registry: DeviceRegistry,
    private readonly metrics: Metrics,
    log: Logger,
    private readonly hooks: BridgeHooks,
  ) {
    this.log = log.child({ component: 'bridge' })
    this.gatewayKey = `${cfg.gateway.productId}/${cfg.gateway.deviceId}`
  }

  get configured(): boolean {
    return !!this.cfg.northbound.url
  }

  start(): void {
    const nb = this.cfg.northbound
    if (!nb.url) {
      this.log.warn('northbound.url is not set: no cloud link; everything waits in the outbox')
      return
    }
    this.outbox.on('committed', this.wakeAll)
    this.outbox.on('evicted', this.forgetAll)
    this.drain.start()
    if (nb.mode === 'gateway') {
      this.addLink(this.gatewayKey, {
        username: nb.username ?? this.gatewayKey,
        password: nb.password ?? this.cfg.gateway.secret,
        clientId: nb.clientId ?? `${this.gatewayKey}/edge`,
        subscriptions: () => [...this.ownSubscriptions(), ...this.childSubscriptions(), ...this.hooks.extraSubscriptions()],
      })
      this.registry.on('changed', this.resubscribe)
      this.registry.on('removed', this.resubscribe)
    } else {
      // The gateway itself is a device of the hub too: its own link carries its own messages.
      if (nb.password ?? this.cfg.gateway.secret) {
        this.addLink(this.gatewayKey, {
          device: this.gatewayKey,
          username: this.gatewayKey,
          password: nb.password ?? this.cfg.gateway.secret,
          clientId: `${this.gatewayKey}/edge`,
          subscriptions: () => this.ownSubscriptions(),
        })
      }
      for (const d of this.registry.list()) this.syncDeviceLink(d)
      this.registry.on('changed', this.syncDeviceLinkListener)
      this.registry.on('removed', this.removeDeviceLink)
    }
  }

  private readonly wakeAll = (rows?: readonly OutboxRow[]): void => {
    for (const l of this.links.values()) l.wake(rows)
  }

  private readonly forgetAll = (ids: number[]): void => {
    const set = new Set(ids)
    for (const l of this.links.values()) l.forget(set)
  }

  /** Bring every link's hub subscriptions in line with what is wanted now. */
  readonly resubscribe = (): void => {
    for (const l of this.links.values()) l.syncSubscriptions()
  }

  // The gateway is a device of the hub too: its own command topics (our `$set_ntp` answers).
  private ownSubscriptions(): string[] {
    return serverSideSubscriptions(this.cfg.gateway.productId, this.cfg.gateway.deviceId)
  }

  // Gateway mode: the children's command topics, one set per device, or one `+` per product for
  // hubs whose ACL allows it (northbound.subscribePerProduct).
  private childSubscriptions(): string[] {
    const enabled = this.registry.list().filter((d) => d.enabled)
    if (!this.cfg.northbound.subscribePerProduct) return enabled.flatMap((d) => serverSideSubscriptions(d.productId, d.deviceId))
    return [...new Set(enabled.map((d) => d.productId))].flatMap((p) => serverSideSubscriptions(p, '+'))
  }

  /** Publish on the gateway's own link, outside the outbox; false when not connected. */
  publishDirect(topic: string, payload: Buffer): boolean {
    return this.links.get(this.gatewayKey)?.publishDirect(topic, payload) ?? false
  }

  private readonly syncDeviceLinkListener = (d: { productId: string; deviceId: string; enabled: boolean }): void =>
    this.syncDeviceLink(d)

  private syncDeviceLink(d: DeviceRef & { enabled: boolean }): void {
    const key = deviceKey(d)
    const existing = this.links.get(key)
    const secret = d.enabled ? this.registry.secretOf(d) : undefined
    if (existing && !secret) {
      this.links.delete(key)
      this.retiredAcked += existing.acked
      void existing.stop()
      return
    }
    if (existing || !secret) return
    this.addLink(key, {
      device: key,
      username: key,
      password: secret,
      clientId: `${key}/edge`,
      // The hub subscribes devices server-side; we ask too, in case it does not (SUBACK 0x80 is fine).
      subscriptions: () => [...serverSideSubscriptions(d.productId, d.deviceId), ...this.hooks.extraSubscriptions(d)],
    })
  }

  private readonly removeDeviceLink = (ref: DeviceRef): void => {
    const link = this.links.get(deviceKey(ref))
    this.links.delete(deviceKey(ref))
    this.retiredAcked += link?.acked ?? 0
    void link?.stop()
  }

  private addLink(key: string, o: Pick<HubLinkOptions, 'username' | 'password' | 'clientId' | 'subscriptions' | 'device'>): void {
    const nb = this.cfg.northbound
    const tls = nb.tls && {
      ca: nb.tls.ca ? readFileSync(nb.tls.ca) : undefined,
      cert: nb.tls.cert ? readFileSync(nb.tls.cert) : undefined,
      key: nb.tls.key ? readFileSync(nb.tls.key) : undefined,
      rejectUnauthorized: nb.tls.rejectUnauthorized,
    }
    const link = new HubLink(
      this.outbox,
      {
        ...o,
        url: nb.url!,
        keepalive: nb.keepalive,
        inflight: nb.inflight,
        maxRate: nb.maxRate,
        tls,
        onMessage: this.hooks.onMessage,
        heldSubscriptions: this.hooks.heldSubscriptions?.(key),
        onConnected: key === this.gatewayKey ? this.hooks.onConnected : undefined,
      },
      this.log.child({ link: key }),
      this.metrics,
    )
    this.links.set(key, link)
    link.start()
  }

  status(): BridgeStatus {
    const links = [...this.links.values()]
    const gw = this.links.get(this.gatewayKey) ?? links[0]
    return {
      configured: this.configured,
      connected: !!gw?.isConnected,
      since: gw?.since ?? null,
      downSince: gw?.downSince ?? null,
      links: links.length,
      linksConnected: links.filter((l) => l.isConnected).length,
      lastError: gw?.lastError ?? null,
      nextRetryAt: gw?.nextRetryAt ?? null,
    }
  }

  /** Messages per second the hub acknowledged (every link), over the last 10 and 60 s. */
  drainRate(): DrainRateView {
    return this.drain.view()
  }

  async stop(): Promise<void> {
    this.drain.stop()
    this.outbox.off('committed', this.wakeAll)
    this.outbox.off('evicted', this.forgetAll)
    await Promise.all([...this.links.values()].map((l) => l.stop()))
    this.links.clear()
  }
}
