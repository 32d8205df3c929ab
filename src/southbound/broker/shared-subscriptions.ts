// Shared subscriptions, `$share/{ShareName}/{filter}` (MQTT 5 section 4.8.2; Mosquitto offers them
// to MQTT 3.1.1 clients too, and so does this broker). aedes 1.2 has none: it stores and restores
// such a subscription like any other (SUBACK, broker.db, a persistent session's reconnect), under
// its full name, which no published topic ever matches. This layer does the delivery: one
// subscription of the broker's own to the inner filter per share, and each message that matches
// goes to one member of the share, round robin among its connected members. Members of other
// shares each get their copy, and non-shared subscriptions theirs (aedes, untouched).
// Decision 0023-shared-subscriptions.
import type { Aedes, AedesPublishPacket, Client } from 'aedes'

export interface SharedFilter {
  share: string
  filter: string
}

const SHARE_PREFIX = '$share/'

/**
 * `$share/{ShareName}/{filter}` read, or null for any other filter; 'invalid' for a `$share/`
 * filter that is not one: a ShareName must be at least one character without `/`, `+` or `#`,
 * followed by a non-empty filter [MQTT-4.8.2-1] [MQTT-4.8.2-2].
 */
export function parseSharedFilter(topic: string): SharedFilter | 'invalid' | null {
  if (!topic.startsWith(SHARE_PREFIX)) return null
  const rest = topic.slice(SHARE_PREFIX.length)
  const slash = rest.indexOf('/')
  if (slash <= 0) return 'invalid'
  const share = rest.slice(0, slash)
  const filter = rest.slice(slash + 1)
  if (share.includes('+') || share.includes('#') || filter === '') return 'invalid'
  return { share, filter }
}

interface Member {
  clientId: string
  qos: number
  /** the member's connection; null while its persistent session is away */
  client: Client | null
}

interface Share {
  filter: string
  /** by client id, in the order they joined */
  members: Map<string, Member>
  /** round robin: the position of the member the next message is offered to first */
  next: number
  deliver: (packet: AedesPublishPacket, cb: () => void) => void
}

export interface SharedSubscriptionHooks {
  /** Whether this client may receive this packet at all (the listener's and the device's rules), without side effects. */
  mayReceive(client: Client, packet: AedesPublishPacket): boolean
  /** Queue a QoS 1/2 message for a persistent session that is away (its queue in broker.db). */
  enqueue(clientId: string, qos: number, packet: AedesPublishPacket): Promise<void>
}

const isLive = (c: Client | null): c is Client => c !== null && !c.closed

export class SharedSubscriptions {
  private readonly shares = new Map<string, Share>()

  constructor(
    private readonly aedes: Aedes,
    private readonly hooks: SharedSubscriptionHooks,
  ) {}

  /** A client joined a share (a SUBSCRIBE, or its persistent session restored at reconnect); `client` null for a session restored from broker.db while it is away. */
  join(clientId: string, client: Client | null, shared: SharedFilter, qos: number): void {
    const key = `${shared.share}\u0000${shared.filter}`
    let share = this.shares.get(key)
    if (!share) {
      const created: Share = { filter: shared.filter, members: new Map(), next: 0, deliver: (p, cb) => this.deliver(created, p, cb) }
      share = created
      this.shares.set(key, share)
      // One subscription of the broker's own per share, to the inner filter: the message goes
      // through the same mqemitter as every other subscription's.
      this.aedes.subscribe(shared.filter, share.deliver, () => undefined)
    }
    share.members.set(clientId, { clientId, qos, client })
  }

  /** A member left its share (UNSUBSCRIBE). */
  leave(clientId: string, shared: SharedFilter): void {
    const key = `${shared.share}\u0000${shared.filter}`
    const share = this.shares.get(key)
    if (!share?.members.delete(clientId)) return
    if (share.members.size > 0) return
    this.shares.delete(key)
    this.aedes.unsubscribe(share.filter, share.deliver, () => undefined)
  }

  /**
   * A connection ended: a clean session's memberships end with it; a persistent session's stay,
   * away (messages are queued for it while no member of its share is connected).
   */
  disconnected(client: Client): void {
    for (const [key, share] of [...this.shares]) {
      const m = share.members.get(client.id)
      if (m?.client !== client) continue
      if (client.clean) this.leave(client.id, splitKey(key))
      else m.client = null
    }
  }

  /** A clean session started for this client id: what an earlier persistent session of it joined is gone [MQTT-3.1.2-6]. */
  sessionCleaned(client: Client): void {
    for (const [key, share] of [...this.shares]) {
      const m = share.members.get(client.id)
      if (m && m.client !== client) this.leave(client.id, splitKey(key))
    }
  }

  private deliver(share: Share, packet: AedesPublishPacket, cb: () => void): void {
    // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match topics starting with `$`.
    if (packet.topic.startsWith('$') && (share.filter.startsWith('+') || share.filter.startsWith('#'))) return cb()
    const members = [...share.members.values()]
    const n = members.length
    // Round robin among the connected members that may receive it.
    for (let i = 0; i < n; i++) {
      const m = members[(share.next + i) % n]
      if (!isLive(m.client) || !this.hooks.mayReceive(m.client, packet)) continue
      share.next = (share.next + i + 1) % n
      deliverTo(m.client, packet, Math.min(packet.qos, m.qos), this.hooks.enqueue, cb)
      return
    }
    // Nobody connected: a QoS 1/2 message waits in the session of a persistent member that is
    // away (round robin too), as it would for a non-shared subscription.
    const qos = packet.qos
    for (let i = 0; i < n && qos > 0; i++) {
      const m = members[(share.next + i) % n]
      if (m.client !== null || m.qos === 0) continue
      share.next = (share.next + i + 1) % n
      this.hooks.enqueue(m.clientId, Math.min(qos, m.qos), packet).then(cb, cb)
      return
    }
    cb()
  }
}

/**
 * What aedes' own subscriptions do with a message for a client (lib/handlers/subscribe.js): a copy
 * that keeps the message's brokerId/brokerCounter (aedes' per-client duplicate check, and the
 * persistence's match of a queued copy, rely on them), at most at the QoS granted [MQTT-4.8.2-3],
 * RETAIN 0 as for any live message; a persistent session's copy is queued first (aedes queues a
 * message for the persistent subscriptions before it is emitted). Done synchronously, in the order
 * messages are emitted, as aedes' own subscriptions are: the duplicate check expects it.
 */
function deliverTo(client: Client, packet: AedesPublishPacket, qos: number, enqueue: SharedSubscriptionHooks['enqueue'], cb: () => void): void {
  const copy = { ...packet, qos, retain: false } as AedesPublishPacket
  const deliver = client as unknown as AedesDelivery
  if (qos === 0) return deliver.deliver0(copy, cb)
  if (client.clean) return deliver.deliverQoS(copy, cb)
  // Memory has the copy before this returns; the message is done once the copy is durable too.
  const queued = enqueue(client.id, qos, copy)
  deliver.deliverQoS(copy, () => void queued.then(cb, cb))
}

/** The per-client delivery functions aedes' subscriptions use (lib/client.js). */
interface AedesDelivery {
  deliver0(packet: AedesPublishPacket, cb: () => void): void
  deliverQoS(packet: AedesPublishPacket, cb: () => void): void
}

function splitKey(key: string): SharedFilter {
  const i = key.indexOf('\u0000')
  return { share: key.slice(0, i), filter: key.slice(i + 1) }
}
