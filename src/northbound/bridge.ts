// The northbound bridge: drains the outbox to the cloud hub and turns what the hub sends into
// Commands for the core. `gateway` mode uses one connection with the gateway's credentials;
// `devices` mode one per child with the child's own (DESIGN.md, "Northbound modes").
import { readFileSync } from 'node:fs'
import type { Config } from '../config.js'
import type { Logger } from '../core/log.js'
import type { Metrics } from '../core/metrics.js'
import type { Command, DeviceRef } from '../core/types.js'
import { deviceKey } from '../core/types.js'
import type { Outbox } from '../store/outbox.js'
import type { DeviceRegistry } from '../store/devices.js'
import { HubLink, type HubLinkOptions } from './hub-link.js'
import { parseDownTopic, serverSideSubscriptions } from './hub-topics.js'

export interface BridgeStatus {
  configured: boolean
  connected: boolean
  since: number | null
  links: number
  linksConnected: number
}

export class Bridge {
  private readonly links = new Map<string, HubLink>()
  private readonly log: Logger
  private readonly gatewayKey: string

  constructor(
    private readonly cfg: Config,
    private readonly outbox: Outbox,
    private readonly registry: DeviceRegistry,
    private readonly metrics: Metrics,
    log: Logger,
    private readonly onCommand: (cmd: Command) => void,
    private readonly onConnected: () => void,
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
    if (nb.mode === 'gateway') {
      this.addLink(this.gatewayKey, {
        username: nb.username ?? this.gatewayKey,
        password: nb.password ?? this.cfg.gateway.secret,
        clientId: nb.clientId ?? `${this.gatewayKey}/edge`,
        subscriptions: () => this.registry.list().filter((d) => d.enabled).flatMap((d) => serverSideSubscriptions(d.productId, d.deviceId)),
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
          subscriptions: () => [],
        })
      }
      for (const d of this.registry.list()) this.syncDeviceLink(d)
      this.registry.on('changed', this.syncDeviceLinkListener)
      this.registry.on('removed', this.removeDeviceLink)
    }
  }

  private readonly wakeAll = (): void => {
    for (const l of this.links.values()) l.wake()
  }

  private readonly resubscribe = (): void => {
    for (const l of this.links.values()) l.syncSubscriptions()
  }

  private readonly syncDeviceLinkListener = (d: { productId: string; deviceId: string; enabled: boolean }): void =>
    this.syncDeviceLink(d)

  private syncDeviceLink(d: DeviceRef & { enabled: boolean }): void {
    const key = deviceKey(d)
    const existing = this.links.get(key)
    const secret = d.enabled ? this.registry.secretOf(d) : undefined
    if (existing && !secret) {
      this.links.delete(key)
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
      subscriptions: () => serverSideSubscriptions(d.productId, d.deviceId),
    })
  }

  private readonly removeDeviceLink = (ref: DeviceRef): void => {
    const link = this.links.get(deviceKey(ref))
    this.links.delete(deviceKey(ref))
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
        onMessage: (topic, payload) => this.onMessage(topic, payload),
        onConnected: key === this.gatewayKey ? this.onConnected : undefined,
      },
      this.log.child({ link: key }),
      this.metrics,
    )
    this.links.set(key, link)
    link.start()
  }

  private onMessage(topic: string, payload: Buffer): void {
    const t = parseDownTopic(topic)
    if (!t || t.kind === 'tags') {
      // Tag commands are fanned out by the tag service (cloud-to-device issue); malformed ones counted.
      this.metrics.downlinks.inc({ outcome: 'malformed' })
      this.log.warn({ topic }, 'message from the hub on a topic the gateway does not handle; dropped')
      return
    }
    const device = { productId: t.productId, deviceId: t.deviceId! }
    const cmd: Command =
      t.kind === 'm2m'
        ? { type: 'm2m', device, name: '', encoding: 'plain', requestId: t.messageId!, senderDeviceId: t.senderDeviceId, payload }
        : { type: t.kind, device, name: t.name!, encoding: t.encoding!, requestId: t.requestId!, expiresAt: t.expiresAt, payload }
    this.onCommand(cmd)
  }

  status(): BridgeStatus {
    const links = [...this.links.values()]
    const gw = this.links.get(this.gatewayKey) ?? links[0]
    return {
      configured: this.configured,
      connected: !!gw?.isConnected,
      since: gw?.since ?? null,
      links: links.length,
      linksConnected: links.filter((l) => l.isConnected).length,
    }
  }

  async stop(): Promise<void> {
    this.outbox.off('committed', this.wakeAll)
    await Promise.all([...this.links.values()].map((l) => l.stop()))
    this.links.clear()
  }
}
