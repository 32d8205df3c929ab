// The local MQTT broker (aedes) for native devices: to them it looks exactly like the cloud hub
// (PROTOCOL.md, "Broker-side rules"): same authentication, same ACL, same server-side subscriptions.
// The ACL check and the durable outbox write both happen inside authorizePublish: plain aedes
// PUBACKs a QoS 1 publish as soon as that hook calls back (patched aedes 1.2.0 once the publish is
// done, so that the copies queued for away sessions are durable too: decision 0016).
import type { Aedes, Client, AedesPublishPacket, PublishPacket, Subscription } from 'aedes'
import net from 'node:net'
import tls from 'node:tls'
import { readFileSync } from 'node:fs'
import type { AdapterContext, BrokerSessionStore, ClientSession, PacketMarks, QueueDrop } from '../../core/adapter-context.js'
import type { Command, DeliveryResult, DeviceRef, SouthboundAdapter } from '../../core/types.js'
import { deviceKey } from '../../core/types.js'
import { ErrorCodes } from '../../core/errors.js'
import { RateLimitedLog } from '../../core/log.js'
import type { Counter, Gauge } from 'prom-client'
import type { BrokerConfig, ListenerConfig } from './schema.js'
import { hasUpKind, isTagTopic, mayDeviceSubscribe, parseUpTopic, parseUsername, serverSideSubscriptions, topicMatches } from '../../core/hub-topics.js'
import { commandTopic, mayPublish } from '../../core/device-acl.js'
import { guardClient, type Violation } from './packet-guard.js'
import { createAedes, ReasonCode, speaksMqtt5 } from './mqtt5.js'
import { parseSharedFilter, SharedSubscriptions } from './shared-subscriptions.js'
import { AppAccounts, mayAppPublish, mayAppReceive, mayAppSubscribe, type AppAccount } from './app-accounts.js'

type Zone = 'external' | 'internal'

/** Who publishes, as far as the ACL asks (a connected client's state, or a will's origin). */
type PublisherState = Pick<ClientState, 'zone' | 'device' | 'app'> & Partial<Pick<ClientState, 'protoVer'>>

interface ClientState {
  zone: Zone
  device?: DeviceRef
  /** A local application account (broker.apps) on an external listener: its own ACL, never a device. */
  app?: AppAccount
  /** Counted in apps_connected (from its CONNACK until it leaves). */
  appCounted?: boolean
  keepalive: number | null
  protoVer: number | null
  session?: ClientSession
  /**
   * Resolves true once the device's server-side subscriptions are in place (false if it left
   * first). The device is owned from before its CONNACK; a delivery waits for this, so nothing sent
   * to it in its first moments is lost.
   */
  subscribed?: Promise<boolean>
  settleSubscribed?: (ok: boolean) => void
}

export type BrokerAdapterOptions = Pick<BrokerConfig, 'aclDenyAction'> & Partial<Pick<BrokerConfig, 'mqtt5' | 'maxQueuedMessages' | 'maxQueuedBytes' | 'allowEmptyClientId' | 'apps'>> & { listeners: readonly ListenerConfig[] }

// A device that does not PUBACK a command within this long is treated as gone; the command stays queued.
const DELIVERY_ACK_TIMEOUT_MS = 10_000

// CONNACK return codes (MQTT 3.1.1, 3.2.2.3).
const SERVER_UNAVAILABLE = 3
const BAD_USERNAME_OR_PASSWORD = 4
const NOT_AUTHORIZED = 5

// Clients refused in preConnect for speaking MQTT 5: their CONNACK error is not "malformed".
const unsupportedProtocol = new WeakSet<object>()


// A publish the ACL refuses: with MQTT 5 it is answered PUBACK/PUBREC 0x87 (the message is the
// Reason String the client sees), with 3.1.1 acknowledged and dropped, or the connection closed.
class PublishRefused extends Error {}

function authError(returnCode: number, message: string): Error & { returnCode: number } {
  return Object.assign(new Error(message), { returnCode })
}

export class BrokerAdapter implements SouthboundAdapter {
  readonly name = 'broker'
  readonly kind = 'native'
  private aedes?: Aedes
  // `$share/{ShareName}/{filter}` (aedes 1.2 only; shared-subscriptions.ts).
  private shared?: SharedSubscriptions
  private servers: net.Server[] = []
  private readonly zoneOf = new WeakMap<object, Zone>()
  // A listener's denyTopics, by connection (only for listeners that have some).
  private readonly denyOf = new WeakMap<object, readonly string[]>()
  private readonly state = new WeakMap<Client, ClientState>()
  private readonly byDevice = new Map<string, Set<Client>>()
  // Publishes refused by the ACL: acknowledged (MQTT 3.1.1 has no way to refuse) but never forwarded.
  // Keyed by the payload Buffer: aedes forwards a copy of the packet (aedes-packet) that keeps
  // the payload object but not the packet object itself.
  private readonly denied = new WeakSet<Buffer>()
  // The subscription objects of the broker's own server-side subscribe: exempt from the device
  // ACL. Per subscription, not per client, or a device subscribing at the same moment would be too.
  private readonly serverSubscriptions = new WeakSet<object>()
  // Up messages from devices. They go north (or, m2m between children, through the core's command
  // path); only trusted local tools on internal listeners and app accounts (within their filters)
  // see them on the local broker, so a device never gets one twice.
  private readonly fromDevice = new WeakSet<Buffer>()
  // What the rules republish for on-site consumers (`republish`): for trusted local tools on the
  // internal listeners and app accounts (broker.apps); a device never receives it.
  private readonly localOnly = new WeakSet<Buffer>()
  // What the core hands down to one device: forwarded to that device's clients only (and to trusted
  // local tools), never to another device holding the same topic (a tag both carry). Keyed by the
  // payload Buffer, as `denied` is.
  private readonly targetOf = new WeakMap<Buffer, string>()
  // PUBACKs from devices for commands delivered with QoS 1: `${device}\0${topic}` -> waiter.
  private readonly ackWaiters = new Map<string, { done: (ok: boolean) => void }>()
  // `${clientId}\0${packet id}` -> ack waiter key, for the PUBACKs above.
  private readonly pubackWaiters = new Map<string, string>()
  // `${clientId}\0${command topic}` -> the packet id a command went out with to this persistent
  // session before (read from the copy its session queue kept, also across a restart): the command
  // queue sends it again with that id and DUP=1 [MQTT-3.3.1-1] [MQTT-4.4.0-1]. Per connection.
  private readonly sentIds = new Map<string, number>()
  // A will restored from broker.db (a previous run's client): who the client was.
  private readonly willOrigin = new WeakMap<object, string>()
  private readonly clientsGauge: Gauge
  private readonly appsGauge: Gauge<'app'>
  private readonly apps: AppAccounts
  private readonly queueDropped: Counter<'unit'>
  private readonly warn: RateLimitedLog
  private stopping = false
  private boundPorts: number[] = []

  constructor(
    private readonly core: AdapterContext,
    private readonly opts: BrokerAdapterOptions,
  ) {
    this.warn = new RateLimitedLog(core.log)
    this.clientsGauge = core.metrics.gauge('clients', 'Clients connected to the local MQTT broker (devices and local tools)')
    this.appsGauge = core.metrics.gauge('apps_connected', 'Connections of each local application account (broker.apps) on the external listeners', ['app'])
    this.apps = new AppAccounts(opts.apps ?? [])
    this.queueDropped = core.metrics.counter('queue_dropped_total', 'Messages (unit=messages) and bytes (unit=bytes) dropped from persistent sessions’ queues over broker.maxQueuedMessages/maxQueuedBytes, oldest first', ['unit'])
  }

  /** Ports actually bound, in listener order (useful with port 0). */
  get ports(): number[] {
    return this.boundPorts
  }

  get clientCount(): number {
    return this.aedes?.connectedClients ?? 0
  }

  async start(): Promise<void> {
    const log = this.core.log
    // Persistent sessions, retained messages and wills in broker.db (undefined: aedes' memory).
    const sessions = this.core.brokerSessions()
    sessions?.setMarks(this.marks())
    sessions?.on('queueDropped', (d: QueueDrop) => this.onQueueDropped(d))
    this.aedes = await createAedes(this.opts.mqtt5 === true, {
      persistence: sessions,
      // The SDK's client ids are `{ProductId}/{DeviceId}/{suffix}`: longer than MQTT 3.1's 23.
      maxClientsIdLength: 256,
      preConnect: (client, packet, cb) => {
        // aedes 1.2 speaks MQTT 3.1 and 3.1.1 only; a v5 client would otherwise learn nothing but
        // "unacceptable protocol version" (CONNACK 1), and the log would call it malformed.
        if (packet.protocolVersion === 5 && !this.opts.mqtt5) {
          this.core.metrics.rejected('unsupported_protocol')
          this.warn.warn(`mqtt5:${packet.clientId}`, { clientId: packet.clientId, ip: (client.conn as net.Socket).remoteAddress ?? null, code: ErrorCodes.UNSUPPORTED_PROTOCOL },
            'MQTT 5 client refused: this gateway speaks MQTT 3.1.1 only while broker.mqtt5 is false; configure the device for protocol version 4 (3.1.1), or set broker.mqtt5: true (docs/operators/mqtt5.md)')
          unsupportedProtocol.add(client)
        }
        this.state.set(client, {
          zone: this.zoneOf.get(client.conn) ?? 'external',
          keepalive: packet.keepalive ?? null,
          protoVer: packet.protocolVersion ?? null,
        })
        cb(null, true)
      },
      authenticate: (client, username, password, cb) => {
        this.authenticate(client, username, password).then(
          () => cb(null, true),
          (err: Error & { returnCode: number }) => cb(err, false),
        )
      },
      authorizePublish: (client, packet, cb) => this.authorizePublish(client, packet, cb),
      authorizeSubscribe: (client, sub, cb) => cb(null, this.authorizeSharedOrNot(client, sub)),
      authorizeForward: (client, packet) => this.authorizeForward(client, packet),
    })
    const aedes = this.aedes
    // aedes 1.x: the broker does nothing until listen() has set up its persistence and mq.
    await aedes.listen()
    if (!this.opts.mqtt5) this.shared = this.sharedSubscriptions(aedes, sessions)
    if (sessions) this.keepSessions(aedes, sessions)
    if (sessions) await this.restored(aedes, sessions)
    // Every command awaiting a PUBACK listens for its device's disconnect.
    aedes.setMaxListeners(0)
    aedes.on('clientReady', (client) => this.onReady(client))
    aedes.on('clientDisconnect', (client) => this.onGone(client))
    if (this.shared) {
      const shared = this.shared
      aedes.on('clientReady', (client) => {
        if (client.clean) shared.sessionCleaned(client)
      })
      aedes.on('clientDisconnect', (client) => shared.disconnected(client))
      aedes.on('unsubscribe', (topics, client) => {
        for (const t of topics) {
          const s = parseSharedFilter(t)
          if (s && s !== 'invalid') shared.leave(client.id, s)
        }
      })
    }
    // aedes reports a PUBACK with the acknowledged packet only for persistent sessions; every PUBACK
    // does pass through the persistence's outgoingClearMessageId (a documented plug-in method), so
    // that is where a command's acknowledgement is matched by client and packet id.
    const persistence = (aedes as unknown as { persistence: { outgoingClearMessageId: (c: Client, p: { messageId?: number }) => Promise<unknown> } }).persistence
    const clear = persistence.outgoingClearMessageId.bind(persistence)
    persistence.outgoingClearMessageId = (c, p) => {
      if (p.messageId !== undefined) this.onPuback(c, p.messageId)
      return clear(c, p)
    }
    aedes.on('subscribe', (subs, client) => {
      // A refused subscription comes back with its granted QoS set to a reason code (0x80; with
      // MQTT 5 0x87, or 0x9E for a `$share/` filter aedes 2 refuses before authorizeSubscribe).
      for (const s of subs) if ((s.qos as number) === ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED) this.sharedRefused(client, s.topic)
      const st = this.state.get(client)
      if (!st?.device) return
      for (const s of subs) if ((s.qos as number) < ReasonCode.UNSPECIFIED_ERROR && isTagTopic(s.topic)) this.core.tagSubscribed(st.device, client.id, s.topic)
    })
    aedes.on('unsubscribe', (topics, client) => {
      const st = this.state.get(client)
      if (!st?.device) return
      for (const t of topics) if (isTagTopic(t)) this.core.tagUnsubscribed(client.id, t)
    })
    aedes.on('clientError', (client, err) => {
      // A refusal we made (authentication, the ACL) is counted and logged once, where it was made.
      if ('returnCode' in err || err instanceof PublishRefused || unsupportedProtocol.has(client)) return
      this.core.metrics.rejected('malformed_packet')
      this.warn.warn('clientError', { clientId: client?.id, err: err.message }, 'client sent something the broker could not accept; connection closed')
    })
    aedes.on('connectionError', (client, err) => {
      if ('returnCode' in err || unsupportedProtocol.has(client)) return
      this.core.metrics.rejected('malformed_packet')
      this.warn.warn('connectionError', { err: err.message }, 'malformed connection refused')
    })
    this.core.devices.onRevoked((ref, why) => this.kick(ref, why))

    for (const [i, l] of this.opts.listeners.entries()) {
      const server = l.tls
        ? tls.createServer({
            cert: readFileSync(l.tls.cert),
            key: readFileSync(l.tls.key),
            ca: l.tls.ca ? readFileSync(l.tls.ca) : undefined,
            requestCert: l.tls.requestClientCert,
            rejectUnauthorized: l.tls.requestClientCert,
          })
        : net.createServer()
      const onConn = (socket: net.Socket): void => {
        this.zoneOf.set(socket, l.zone)
        if (l.denyTopics?.length) this.denyOf.set(socket, l.denyTopics)
        socket.setNoDelay(true)
        // The address is read now: once the guard has closed the socket it is gone.
        const ip = socket.remoteAddress ?? null
        guardClient(aedes.handle(socket), (v) => this.onViolation(ip, v), { allowEmptyClientId: this.opts.allowEmptyClientId })
      }
      server.on(l.tls ? 'secureConnection' : 'connection', onConn)
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(l.port, l.host, () => {
          server.off('error', reject)
          resolve()
        })
      }).catch((err: NodeJS.ErrnoException) => {
        const why = err.code === 'EADDRINUSE' ? 'another process has this port: a system mosquitto?' : err.code === 'EADDRNOTAVAIL' ? 'the address is not one of this machine' : err.message
        throw Object.assign(new Error(`broker.listeners[${i}]: cannot listen on ${l.host}:${l.port} (${why}): stop the other process or change broker.listeners`), {
          code: ErrorCodes.LISTENER_FAILED,
        })
      })
      // Once listening (a failed listen is the start's error above, said once).
      server.on('error', (err) => log.error({ err, code: ErrorCodes.LISTENER_FAILED, port: l.port }, 'MQTT listener failed'))
      this.servers.push(server)
      this.boundPorts.push((server.address() as net.AddressInfo).port)
      log.info(
        { host: l.host, port: this.boundPorts.at(-1), zone: l.zone, tls: !!l.tls },
        `MQTT listener on ${l.host}:${this.boundPorts.at(-1)}${l.tls ? ' (TLS)' : ''}: ${l.zone === 'internal' ? 'internal, no login (local tools)' : 'external, devices and app accounts log in'}`,
      )
    }
  }

  private async authenticate(client: Client, username: string | undefined, password: Buffer | undefined): Promise<void> {
    const st = this.state.get(client)!
    if (!this.core.intakeOpen()) throw authError(SERVER_UNAVAILABLE, 'gateway storage full')
    if (st.zone === 'internal') return
    const app = this.apps.get(username)
    if (app) return this.authenticateApp(client, st, app, password)
    const ref = parseUsername(username)
    if (!ref || !password) {
      this.core.metrics.rejected('auth_failed')
      this.warn.warn(`auth:${username ?? ''}`, { username: username ?? null, clientId: client.id, result: 'bad_username', code: ErrorCodes.AUTH_FAILED },
        'client refused: the username must be a device\'s {ProductId}/{DeviceId} with its Secret as password, or a local app account of broker.apps')
      throw authError(BAD_USERNAME_OR_PASSWORD, 'username must be {ProductId}/{DeviceId} with the Secret as password, or a broker.apps account')
    }
    const result = await this.core.devices.authenticate(ref, password.toString('utf8'))
    if (result !== 'ok') {
      this.core.metrics.rejected('auth_failed')
      this.warn.warn(`auth:${deviceKey(ref)}`, { device: deviceKey(ref), clientId: client.id, result, code: ErrorCodes.AUTH_FAILED }, 'device refused')
      throw authError(result === 'disabled' ? NOT_AUTHORIZED : BAD_USERNAME_OR_PASSWORD, `device ${result}`)
    }
    st.device = ref
    this.register(client, st)
  }

  /** A local application account: its password against the scrypt hash of broker.apps (never logged). */
  private async authenticateApp(client: Client, st: ClientState, app: AppAccount, password: Buffer | undefined): Promise<void> {
    if (password !== undefined && (await this.apps.verify(app, password.toString('utf8')))) {
      st.app = app
      return
    }
    this.core.metrics.rejected('auth_failed')
    const ip = (client.conn as net.Socket).remoteAddress ?? null
    this.warn.warn(`auth:app:${app.username}`, { app: app.username, clientId: client.id, ip, result: password === undefined ? 'no_password' : 'bad_password', code: ErrorCodes.AUTH_FAILED },
      'app account refused: wrong password; check the password the application uses, or make a new hash with `iothub-edge hash-password` for broker.apps[].passwordHash')
    throw authError(BAD_USERNAME_OR_PASSWORD, 'bad user name or password')
  }

  /**
   * An authenticated device client is the route to its device from now on, before aedes writes the
   * CONNACK: the hub may act on the device's arrival at once, and aedes hands a persistent session
   * its queued messages (one event-loop turn each) before it reports the client ready.
   */
  private register(client: Client, st: ClientState): void {
    const key = deviceKey(st.device!)
    let set = this.byDevice.get(key)
    if (!set) this.byDevice.set(key, (set = new Set()))
    set.add(client)
    st.subscribed = new Promise<boolean>((resolve) => (st.settleSubscribed = resolve))
    // A client that never gets ready (it fails or leaves during the connect) gets no clientDisconnect.
    ;(client.conn as net.Socket).once('close', () => {
      st.settleSubscribed?.(false)
      const clients = this.byDevice.get(key)
      clients?.delete(client)
      if (clients?.size === 0) this.byDevice.delete(key)
    })
  }

  private authorizePublish(client: Client | null, packet: PublishPacket, cb: (err?: Error | null) => void): void {
    if (!client) return cb(null) // the broker's own publishes (command delivery)
    const st = this.state.get(client)!
    if (!speaksMqtt5(st.protoVer)) return this.checkPublish(st, client.id, packet, cb)
    this.checkPublish(st, client.id, packet, (err) => {
      if (!err) return cb(null)
      if (err instanceof PublishRefused) {
        // aedes 2 answers 0x87 and keeps the connection; `disconnect` closes it after that answer.
        cb(err)
        if (this.opts.aclDenyAction === 'disconnect') setImmediate(() => client.close())
        return
      }
      // Not durable: no acknowledgement at all (aedes 2 would answer 0x87, and the client would
      // drop the message): the connection closes and the client sends it again, as with 3.1.1.
      client.close()
      cb(err)
    })
  }

  /** The ACL and the way north for what a client publishes (its will too, also one a later run publishes). */
  private checkPublish(st: PublisherState, clientId: string, packet: PublishPacket, cb: (err?: Error | null) => void): void {
    const topic = packet.topic
    const up = parseUpTopic(topic)
    if (st.app) {
      // An app's message stays on the local broker: not a device's uplink, never north (app-accounts.ts).
      return mayAppPublish(st.app, topic) ? cb(null) : this.deny(st, clientId, packet, 'acl_denied', cb)
    }
    if (st.zone === 'external') {
      if (!up) return this.deny(st, clientId, packet, topic.startsWith('$SYS') || !hasUpKind(topic) ? 'acl_denied' : 'bad_topic', cb)
      if (!mayPublish(st.device!, up)) return this.deny(st, clientId, packet, 'acl_denied', cb)
    } else if (topic.startsWith('$SYS')) {
      return this.deny(st, clientId, packet, 'acl_denied', cb) // $SYS is the broker's own, for everybody (aedes' default rule)
    } else if (!up) {
      return cb(null) // internal tools may use any topic locally; only hub topics go north
    }
    if (st.zone === 'external') this.fromDevice.add(packet.payload as Buffer)
    this.core
      .uplink({ topic: up, payload: packet.payload as Buffer, transport: 'mqtt', receivedAt: Date.now() })
      .then(
        () => cb(null),
        // Not durable: no PUBACK. The error closes the connection; the client resends on reconnect.
        (err: Error) => {
          this.denied.add(packet.payload as Buffer)
          cb(err)
        },
      )
  }

  /** A publish the ACL refuses: counted, logged once per publisher and reason, never forwarded. */
  private deny(st: PublisherState, clientId: string, packet: PublishPacket, reason: 'acl_denied' | 'bad_topic', cb: (err?: Error | null) => void): void {
    const topic = packet.topic
    this.core.metrics.rejected(reason)
    this.denied.add(packet.payload as Buffer)
    packet.retain = false
    const device = st.device ? deviceKey(st.device) : null
    const app = st.app?.username
    this.warn.warn(`${reason}:${device ?? (app && `app:${app}`) ?? clientId}`, { device, ...(app && { app }), clientId: clientId, topic, code: reason === 'bad_topic' ? ErrorCodes.BAD_TOPIC : ErrorCodes.ACL_DENIED },
      reason === 'bad_topic'
        ? 'publish refused: topic is not one of PROTOCOL.md up topics'
        : app
          ? "publish refused: outside the app account's publish filters (broker.apps), or in the hub's topic space, which apps may not publish in"
          : 'publish refused by ACL')
    if (this.opts.aclDenyAction === 'disconnect' || speaksMqtt5(st.protoVer)) cb(new PublishRefused(reason))
    else cb(null)
  }

  /** A packet the guard refused (the connection is closed already): counted and logged once. */
  private onViolation(ip: string | null, v: Violation): void {
    this.core.metrics.rejected('malformed_packet')
    this.warn.warn(`violation:${ip}:${v.rule}`, { ip, rule: `[${v.rule}]`, packet: v.cmd, connack: v.connack ?? null, code: ErrorCodes.MQTT_PROTOCOL_VIOLATION },
      `MQTT ${v.cmd} refused (${v.what}) and the connection closed: fix the client; docs/integrators/mqtt-conformance.md lists what the broker refuses`)
  }

  /**
   * `$share/{ShareName}/{filter}`: granted if its filter would be, on the same rules (the
   * listener's denyTopics, the device ACL); the client joins the share. Refused (SUBACK 0x80)
   * rather than granted as a literal topic nobody ever publishes on: `$queue/` (an older spelling
   * Mosquitto dropped), a malformed `$share/`, and every `$share/` with broker.mqtt5 on (aedes 2
   * refuses them for v5 clients itself).
   */
  private authorizeSharedOrNot(client: Client, sub: Subscription): Subscription | null {
    const shared = parseSharedFilter(sub.topic)
    if (shared === null && !sub.topic.startsWith('$queue/')) return this.authorizeSubscribe(client, sub)
    if (shared === null || shared === 'invalid' || !this.shared) {
      this.sharedRefused(client, sub.topic)
      return null
    }
    if (!this.authorizeSubscribe(client, { ...sub, topic: shared.filter })) return null
    this.shared.join(client.id, client, shared, sub.qos)
    return sub
  }

  /**
   * Persistent sessions across a restart, also those without subscriptions: CONNACK session
   * present [MQTT-3.2.2-2] comes from the patch's `persistentSessions` set (aedes 1.2), which
   * broker.db fills at start and hears of each new one.
   */
  private keepSessions(aedes: Aedes, sessions: BrokerSessionStore): void {
    const known = (aedes as unknown as { persistentSessions?: Set<string> }).persistentSessions
    for (const id of sessions.sessionIds()) known?.add(id)
    aedes.on('clientReady', (client) => {
      if (!client.clean) sessions.keepSession(client.id)
    })
  }

  /** Shared subscriptions with the way they reach a client, and those broker.db kept for persistent sessions that are away. */
  private sharedSubscriptions(aedes: Aedes, sessions: BrokerSessionStore | undefined): SharedSubscriptions {
    const persistence = (aedes as unknown as { persistence: { outgoingEnqueue: (sub: { clientId: string; qos: number }, p: AedesPublishPacket) => Promise<void> } }).persistence
    const shared = new SharedSubscriptions(aedes, {
      mayReceive: (client, packet) => this.mayReceive(client, packet),
      enqueue: (clientId, qos, packet) => persistence.outgoingEnqueue({ clientId, qos }, packet),
    })
    for (const s of sessions?.storedSubscriptions() ?? []) {
      const parsed = parseSharedFilter(s.topic)
      if (parsed && parsed !== 'invalid') shared.join(s.clientId, null, parsed, s.qos)
    }
    return shared
  }

  private authorizeSubscribe(client: Client, sub: Subscription): Subscription | null {
    const st = this.state.get(client)!
    if (this.denyOf.get(client.conn)?.some((d) => topicMatches(d, sub.topic))) {
      this.core.metrics.rejected('acl_denied')
      this.warn.warn(`deny:${client.id}`, { clientId: client.id, topic: sub.topic, code: ErrorCodes.ACL_DENIED }, "subscription refused (SUBACK 0x80): the listener's denyTopics cover it")
      return null
    }
    if (st.zone === 'internal' || this.serverSubscriptions.has(sub)) return sub
    if (st.app) {
      if (mayAppSubscribe(st.app, sub.topic)) return sub
      this.core.metrics.rejected('acl_denied')
      this.warn.warn(`sub:app:${st.app.username}`, { app: st.app.username, clientId: client.id, topic: sub.topic, code: ErrorCodes.ACL_DENIED },
        "subscription refused (SUBACK 0x80): outside the app account's subscribe filters (broker.apps)")
      return null
    }
    // A persistent session's restored subscriptions come back through this hook: the device's own
    // server-side topics are the broker's, not the device's, to grant.
    if (serverSideSubscriptions(st.device!.productId, st.device!.deviceId).includes(sub.topic)) return sub
    if (mayDeviceSubscribe(st.device!.productId, sub.topic)) return sub
    this.core.metrics.rejected('acl_denied')
    const device = deviceKey(st.device!)
    this.warn.warn(`sub:${device}`, { device, clientId: client.id, topic: sub.topic, code: ErrorCodes.ACL_DENIED }, 'subscription refused by ACL')
    return null // SUBACK 0x80
  }

  private sharedRefused(client: Client, topic: string): void {
    this.core.metrics.rejected('unsupported_protocol')
    this.warn.warn(`share:${client.id}`, { clientId: client.id, topic, code: ErrorCodes.SHARED_SUBSCRIPTION },
      this.opts.mqtt5
        ? 'subscription refused (SUBACK 0x80; MQTT 5: 0x9E for $share/, 0x87 for $queue/): shared subscriptions are not supported with broker.mqtt5 on; subscribe to the topic itself'
        : 'subscription refused (SUBACK 0x80): $queue/ is not supported, and a shared subscription is $share/{ShareName}/{filter} (ShareName without /, + or #); subscribe to $share/{ShareName}/{filter} or the topic itself')
  }

  /**
   * What the broker keeps about a packet beyond a restart, for its forwarding decisions
   * (authorizeForward): they are made by the payload's identity, which a copy read back from
   * broker.db does not have. And who a will's client was, for the run that publishes it.
   */
  private marks(): PacketMarks {
    return {
      of: (packet) => {
        const payload = packet.payload
        if (!Buffer.isBuffer(payload)) return undefined
        if (this.denied.has(payload)) return 'denied'
        if (this.localOnly.has(payload)) return 'local'
        if (this.fromDevice.has(payload)) return 'device'
        const target = this.targetOf.get(payload)
        return target === undefined ? undefined : `target:${target}`
      },
      // The core's command queue keeps a command until its device PUBACKs it (deliver()).
      heldElsewhere: (packet) => Buffer.isBuffer(packet.payload) && this.targetOf.has(packet.payload),
      ofClient: (client) => {
        const st = this.state.get(client as Client)
        if (!st) return undefined
        return st.zone === 'internal' ? 'internal' : st.device ? `device:${deviceKey(st.device)}` : st.app ? `app:${st.app.username}` : undefined
      },
      restore: (packet, mark) => {
        const payload = packet.payload
        if (mark === 'internal' || mark.startsWith('device:') || mark.startsWith('app:')) return void this.willOrigin.set(packet, mark)
        if (!Buffer.isBuffer(payload)) return
        if (mark === 'denied') this.denied.add(payload)
        else if (mark === 'local') this.localOnly.add(payload)
        else if (mark === 'device') this.fromDevice.add(payload)
        else if (mark.startsWith('target:')) this.targetOf.set(payload, mark.slice('target:'.length))
      },
    }
  }

  /**
   * At start, before the listeners open: say what broker.db kept, and publish the wills of clients
   * that were connected when the previous run ended (kill -9, power cut): their connections ended
   * without a DISCONNECT. Each goes through the ACL and north as it would have then.
   */
  private async restored(aedes: Aedes, sessions: BrokerSessionStore): Promise<void> {
    if (sessions.file === undefined) return // in memory only: nothing was kept
    const counts = sessions.counts()
    const orphans: AedesPublishPacket[] = []
    for await (const will of sessions.streamWill({ [aedes.id]: true })) orphans.push(will as AedesPublishPacket)
    let published = 0
    for (const will of orphans) {
      const origin = this.willOrigin.get(will)
      const clientId = String((will as { clientId?: string }).clientId ?? '')
      const [kind, key] = origin?.split(/:(.*)/s) ?? []
      const ref = (kind === 'device' && parseUsername(key)) || undefined
      // An app's will: with its account's rights of this run (gone from broker.apps: not published).
      const app = kind === 'app' ? this.apps.get(key) : undefined
      const ok =
        (kind === 'internal' || ref !== undefined || app !== undefined) &&
        (await new Promise<boolean>((resolve) =>
          this.checkPublish({ zone: kind === 'internal' ? 'internal' : 'external', device: ref, app }, clientId, will, (err) => resolve(!err && !this.denied.has(will.payload as Buffer))),
        ))
      if (ok) {
        await new Promise<void>((resolve) => aedes.publish(will, () => resolve()))
        published++
      }
      await sessions.delWill({ id: clientId })
    }
    // Nothing kept (a first start, or only clean-session clients): not worth a line at info.
    const any = counts.clients > 0 || counts.queued > 0 || counts.retained > 0 || orphans.length > 0
    this.core.log[any ? 'info' : 'debug'](
      { ...counts, willsPublished: published, file: sessions.file },
      `local broker sessions restored from broker.db: ${counts.clients} persistent session(s), ${counts.queued} queued message(s), ${counts.retained} retained, ${published} will(s) of clients connected when the gateway last stopped published`,
    )
  }

  /** A persistent session's queue went over its limits: counted; logged once per client until it comes back for its queue. */
  private onQueueDropped(d: QueueDrop): void {
    this.queueDropped.inc({ unit: 'messages' }, d.messages)
    this.queueDropped.inc({ unit: 'bytes' }, d.bytes)
    if (!d.first) return
    this.core.log.warn(
      { clientId: d.clientId, dropped: d.messages, code: ErrorCodes.BROKER_QUEUE_FULL, maxQueuedMessages: this.opts.maxQueuedMessages, maxQueuedBytes: this.opts.maxQueuedBytes },
      'a persistent session is away and its queue on the local broker is full: its oldest messages are dropped (counted, not logged again until it comes back). Connect the client (or once with clean session on to discard its session), or raise broker.maxQueuedMessages / broker.maxQueuedBytes',
    )
  }

  /** For /api/health: persistent sessions whose queue dropped messages and whose client has not come back. */
  health(): string[] {
    return (this.core.brokerSessions()?.counts().overflowing ?? 0) > 0 ? ['queue_dropped'] : []
  }

  private onReady(client: Client): void {
    const st = this.state.get(client)
    this.clientsGauge.set(this.clientCount)
    if (st?.app) return this.appConnected(client, st, st.app)
    if (!st?.device) return
    // Server-side subscriptions (PROTOCOL.md): exempt from the device ACL. aedes hands these same
    // objects to authorizeSubscribe.
    const device = st.device
    const subs = serverSideSubscriptions(device.productId, device.deviceId).map((topic) => ({ topic, qos: 1 as const }))
    for (const s of subs) this.serverSubscriptions.add(s)
    // aedes subscribes after the CONNACK: a delivery in the meantime waits for these (a command
    // published before them would reach nobody). The session opens (`$connection` sent, queued
    // commands flushed) once they are in place.
    client.subscribe(subs, (err) => {
      if (err || client.closed) return st.settleSubscribed?.(false)
      st.settleSubscribed?.(true)
      const sock = client.conn as net.Socket
      st.session = {
        clientId: client.id,
        device,
        transport: 'mqtt',
        ipaddress: sock.remoteAddress ?? null,
        keepalive: st.keepalive,
        protoVer: st.protoVer,
        persistent: !client.clean,
      }
      this.core.sessionOpened(st.session)
    })
  }

  /** An app account's connection events: one log line each way, and its count in apps_connected. */
  private appConnected(client: Client, st: ClientState, app: AppAccount): void {
    st.appCounted = true
    this.appsGauge.inc({ app: app.username })
    this.core.log.info({ app: app.username, clientId: client.id, ip: (client.conn as net.Socket).remoteAddress ?? null, persistent: !client.clean }, 'app account connected')
  }

  private appGone(client: Client, st: ClientState, app: AppAccount): void {
    if (!st.appCounted) return
    st.appCounted = false
    this.appsGauge.dec({ app: app.username })
    if (!this.stopping) this.core.log.info({ app: app.username, clientId: client.id }, 'app account disconnected')
  }

  private onGone(client: Client): void {
    this.clientsGauge.set(this.clientCount)
    for (const k of this.sentIds.keys()) if (k.startsWith(`${client.id}\u0000`)) this.sentIds.delete(k)
    const st = this.state.get(client)
    if (st?.app) return this.appGone(client, st, st.app)
    if (!st?.device) return
    const set = this.byDevice.get(deviceKey(st.device))
    set?.delete(client)
    if (set?.size === 0) this.byDevice.delete(deviceKey(st.device))
    // A client gone before its session opened (subscriptions still pending) never had one to close.
    if (st.session && !this.stopping) this.core.sessionClosed(st.session)
  }

  private kick(ref: DeviceRef, why: string): void {
    const clients = this.byDevice.get(deviceKey(ref))
    if (!clients) return
    this.core.log.info({ device: deviceKey(ref), clients: clients.size, why }, 'disconnecting device')
    for (const c of [...clients]) c.close()
  }

  /** A device is owned from its authentication (before the CONNACK) until its last connection closes. */
  owns(device: DeviceRef): boolean {
    const clients = this.byDevice.get(deviceKey(device))
    if (!clients) return false
    for (const c of clients) if (!c.closed) return true
    return false
  }

  /** Whether a connection of the device can take a delivery (waits for its server-side subscriptions). */
  private async reachable(device: DeviceRef): Promise<boolean> {
    const clients = [...(this.byDevice.get(deviceKey(device)) ?? [])]
    const ready = await Promise.all(clients.map((c) => this.state.get(c)?.subscribed ?? Promise.resolve(false)))
    return ready.some(Boolean) && this.owns(device)
  }

  /** Whether a client may receive a packet at all (the forwarding rules, without side effects). */
  private mayReceive(client: Client, packet: AedesPublishPacket): boolean {
    const payload = packet.payload as Buffer
    if (this.denied.has(payload)) return false
    if (this.denyOf.get(client.conn)?.some((d) => topicMatches(d, packet.topic))) return false
    const st = this.state.get(client)
    // An app sees, within its subscribe filters, what a local tool does: device up messages, the
    // rules' republish, commands on their way to devices, other apps' and tools' messages.
    if (st?.app) return mayAppReceive(st.app, packet.topic)
    if (this.localOnly.has(payload)) return st?.zone === 'internal'
    if (this.fromDevice.has(payload) && st?.zone !== 'internal') return false
    const target = this.targetOf.get(payload)
    if (target === undefined || st?.zone === 'internal') return true
    return st?.device !== undefined && deviceKey(st.device) === target
  }

  private authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    if (!this.mayReceive(client, packet)) return null
    const st = this.state.get(client)
    const target = this.targetOf.get(packet.payload as Buffer)
    // Apps and local tools watch commands go by; only the target device's copy is the delivery.
    if (target === undefined || st?.zone === 'internal' || st?.app) return packet
    const waiterKey = `${target}\u0000${packet.topic}`
    if (packet.qos === 0) return packet
    // A command to this device is sent by the command queue only: a copy the broker's session
    // queue kept (the device left before its PUBACK) is dropped here, or the device would get it
    // twice at its reconnect, once from each queue (decision 0017, "one owner of redelivery").
    // Its packet id is kept for that resend.
    const sentKey = `${client.id}\u0000${packet.topic}`
    if (!this.ackWaiters.has(waiterKey)) {
      if (!client.clean && packet.messageId) this.sentIds.set(sentKey, packet.messageId)
      return null
    }
    // Give the packet its id now (aedes keeps an id it is handed, and takes the next one from the
    // same per-client counter otherwise), so its PUBACK can be matched.
    let messageId = this.sentIds.get(sentKey)
    const resent = messageId !== undefined
    this.sentIds.delete(sentKey)
    if (messageId === undefined) {
      const c = client as unknown as { _nextId: number }
      messageId = c._nextId
      c._nextId = messageId >= 65535 ? 1 : messageId + 1
    }
    this.pubackWaiters.set(`${client.id}\u0000${messageId}`, waiterKey)
    return Object.assign(Object.create(Object.getPrototypeOf(packet) as object) as AedesPublishPacket, packet, { messageId, dup: resent })
  }

  private onPuback(client: Client, messageId: number): void {
    const k = `${client.id}\u0000${messageId}`
    const waiterKey = this.pubackWaiters.get(k)
    if (waiterKey === undefined) return
    this.pubackWaiters.delete(k)
    this.ackWaiters.get(waiterKey)?.done(true)
  }

  /**
   * Publish the command on its own topic (a tag command on the tag's topic) to this device's
   * connections only. QoS 1 commands count as delivered only once the device PUBACKs (DESIGN.md:
   * queued commands wait until delivered and acknowledged).
   */
  async deliver(cmd: Command): Promise<DeliveryResult> {
    if (!this.aedes || !(await this.reachable(cmd.device))) return 'offline'
    const topic = commandTopic(cmd)
    const device = deviceKey(cmd.device)
    const waiterKey = `${device}\u0000${topic}`
    const qos = cmd.qos ?? 1
    // A Buffer of its own per delivery: the forwarding filter recognises it by identity.
    const payload = Buffer.from(cmd.payload)
    this.targetOf.set(payload, device)
    const acked =
      qos === 1
        ? new Promise<boolean>((resolve) => {
            const timer = setTimeout(() => done(false), DELIVERY_ACK_TIMEOUT_MS)
            const onGone = (): void => {
              if (!this.owns(cmd.device)) done(false)
            }
            const done = (ok: boolean): void => {
              clearTimeout(timer)
              this.aedes?.off('clientDisconnect', onGone)
              this.ackWaiters.delete(waiterKey)
              for (const [k, w] of this.pubackWaiters) if (w === waiterKey) this.pubackWaiters.delete(k)
              resolve(ok)
            }
            this.aedes!.on('clientDisconnect', onGone)
            this.ackWaiters.set(waiterKey, { done })
          })
        : Promise.resolve(true)
    await this.publish(topic, payload, qos)
    return (await acked) ? 'delivered' : 'offline'
  }

  /** A rule's `republish`: QoS 0 to the trusted local tools on internal listeners and the app accounts whose filters cover it. */
  publishLocal(topic: string, payload: Buffer, retain: boolean): Promise<void> {
    if (!this.aedes || this.stopping) return Promise.reject(new Error('the local broker is not running'))
    const copy = Buffer.from(payload)
    this.localOnly.add(copy)
    return this.publish(topic, copy, 0, retain)
  }

  private publish(topic: string, payload: Buffer, qos: 0 | 1, retain = false): Promise<void> {
    const packet = { cmd: 'publish', topic, payload, qos, retain, dup: false } as AedesPublishPacket
    return new Promise((resolve, reject) => this.aedes?.publish(packet, (err) => (err ? reject(err) : resolve())))
  }

  async stop(): Promise<void> {
    if (!this.aedes || this.stopping) return
    this.stopping = true
    // Stop accepting first, then close the clients: nothing new arrives while the store finishes.
    const closing = this.servers.map((s) => new Promise<void>((r) => s.close(() => r())))
    await new Promise<void>((r) => this.aedes!.close(() => r()))
    await Promise.all(closing)
    this.servers = []
    // aedes published the wills of the clients it closed: none of this run is left for the next
    // run to publish again (only a run that ends without stopping leaves its clients' wills).
    const sessions = this.core.brokerSessions()
    if (sessions) {
      const mine: string[] = []
      for await (const will of sessions.streamWill()) if ((will as { brokerId?: string }).brokerId === this.aedes.id) mine.push(String((will as { clientId?: string }).clientId))
      await Promise.all(mine.map((id) => sessions.delWill({ id }).catch(() => undefined)))
    }
  }
}
