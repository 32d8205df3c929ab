// The local broker's durable state: persistent sessions (subscriptions, QoS 1/2 messages queued for
// a device, their in-flight state, incoming QoS 2 packets awaiting PUBREL), retained messages and
// wills, in a SQLite file of its own ({dataDir}/broker.db) beside the gateway's store. It implements
// aedes' persistence interface (aedes-persistence 11, the one aedes 1.2.0 calls: async methods and
// streams) without importing aedes: the store knows no transport. Decision 0017-broker-persistence.
//
// Everything is held in memory as aedes' own memory persistence holds it (subscriptions matched in a
// qlobber trie, queues in arrays): reads never touch the disk. Changes are written behind, group
// committed like the outbox (src/store/outbox.ts): all changes of one event-loop turn become one
// transaction, synchronous=FULL, and a method whose result a device is promised something on (a
// SUBACK, a PUBREC, a CONNACK after a will, a queued message) resolves only once its change is
// committed. What need not be durable at once (a queued QoS 2 message's packet id, a message's
// removal after the device's PUBACK: lost, the message is only sent again, which QoS 1 allows)
// rides along with the next commit, or gets one of its own after LAZY_DELAY_MS; a QoS 1 message's
// packet id is not written at all. Clean-session clients cost nothing: they
// have no stored subscriptions or queue, and their incoming QoS 2 packets stay in memory (the
// session ends with the connection anyway).
import Database from 'better-sqlite3'
import { createRequire } from 'node:module'
import { mkdirSync } from 'node:fs'
import path from 'node:path'
import { Readable } from 'node:stream'
import { EventEmitter } from 'node:events'
import type { Statement } from 'better-sqlite3'
import { GroupCommit } from './group-commit.js'

const require = createRequire(import.meta.url)

/** A packet as aedes hands it over (aedes-packet's shape); `payload` a Buffer or, from some callers, a string. */
export interface BrokerPacket {
  cmd?: string
  topic?: string
  payload?: Buffer | string
  qos?: number
  retain?: boolean
  dup?: boolean
  messageId?: number
  brokerId?: string
  brokerCounter?: number
  clientId?: string
  [key: string]: unknown
}

export interface BrokerSubscription {
  topic: string
  qos: number
  rh?: number
  rap?: boolean | number
  nl?: boolean | number
  subscriptionIdentifier?: number
}

interface SubRecord {
  qos: number
  rh?: number
  rap?: boolean | number
  nl?: boolean | number
  subscriptionIdentifier?: number
}

export interface ClientLike {
  id: string
  /** aedes' Client: true for a clean session (its incoming QoS 2 packets are kept in memory only). */
  clean?: boolean
}

interface BrokerLike {
  id: string
  counter: number
}

/**
 * Labels the broker keeps with a queued or retained packet, so that a decision it made about the
 * packet when it was published (e.g. "only for local tools") still holds for the copy read back
 * after a restart. `of` is asked when a packet is queued or retained; `restore` is called for each
 * packet read back from disk with the label it had.
 */
export interface PacketMarks {
  of(packet: BrokerPacket): string | undefined
  /** A will's label: who the client was (its will may be published by a later run). */
  ofClient(client: ClientLike): string | undefined
  /**
   * True for a packet something else keeps durably until the device acknowledges it (a command in
   * the gateway's command queue): queued without waiting for a commit of its own.
   */
  heldElsewhere(packet: BrokerPacket): boolean
  restore(packet: BrokerPacket, mark: string): void
}

/** How much one persistent session's queue may hold; past either, its oldest messages are dropped. */
export interface QueueLimits {
  maxMessages: number
  maxBytes: number
}

/** A queue over its limit ('queueDropped' event): what was dropped now, and whether it is the first since the queue was last empty. */
export interface QueueDrop {
  clientId: string
  messages: number
  bytes: number
  first: boolean
}

export interface BrokerSessionCounts {
  subscriptions: number
  clients: number
  queued: number
  retained: number
  wills: number
  /** Persistent sessions whose queue dropped messages since it was last empty (their client has not come back). */
  overflowing: number
}

// aedes' packet shape (brokerId, brokerCounter, messageId rules): the same constructor aedes uses.
const Packet = require('aedes-packet') as new (original: BrokerPacket, broker?: BrokerLike) => BrokerPacket
interface Trie {
  add(topic: string, val: unknown): void
  remove(topic: string, val: object): void
  match(topic: string): object[]
  test(topic: string): boolean
  subscriptionsCount: number
}
const QlobberSub = require('qlobber/aedes/qlobber-sub') as new (opts: object) => Trie
const { QlobberTrue } = require('qlobber') as { QlobberTrue: new (opts: object) => Trie }

// `+` matches an empty level too [MQTT-4.7.1-3], as aedes' mqemitter does (matchEmptyLevels).
const QLOBBER_OPTIONS = { wildcard_one: '+', wildcard_some: '#', separator: '/', match_empty_levels: true }

/**
 * Topic order: level by level, a level compared by its characters' code units, a topic before the
 * topics below it (`a` < `a/b` < `a/b/c` < `a/c` < `ab`). At the first difference, the topic whose
 * level ends there (`/` or the end) comes first.
 */
export function compareTopics(a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x === y) continue
    if (x === 0x2f) return -1
    if (y === 0x2f) return 1
    return x - y
  }
  return a.length - b.length
}

/** Writes that need not be durable at once get a commit of their own after this long at most. */
const LAZY_DELAY_MS = 50
/** After a failed commit, the writes are tried again after this long. */
const RETRY_MS = 1_000

export const BROKER_DB_FILE = 'broker.db'

const migrations: string[] = [
  // 1: sessions, queues, retained messages, wills. Packets are JSON without their payload, which is
  // a BLOB of its own (payload_text: it was handed over as a string).
  `
  CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    topic     TEXT NOT NULL,
    record    TEXT NOT NULL,
    PRIMARY KEY (client_id, topic)
  ) WITHOUT ROWID;

  -- seq: the queue order (per client, by seq)
  CREATE TABLE outgoing (
    seq          INTEGER PRIMARY KEY,
    client_id    TEXT NOT NULL,
    packet       TEXT NOT NULL,
    payload      BLOB,
    payload_text INTEGER NOT NULL DEFAULT 0,
    mark         TEXT
  );
  CREATE INDEX outgoing_by_client ON outgoing (client_id, seq);

  CREATE TABLE incoming (
    client_id    TEXT NOT NULL,
    message_id   INTEGER NOT NULL,
    packet       TEXT NOT NULL,
    payload      BLOB,
    payload_text INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, message_id)
  ) WITHOUT ROWID;

  CREATE TABLE retained (
    topic        TEXT PRIMARY KEY,
    packet       TEXT NOT NULL,
    payload      BLOB,
    payload_text INTEGER NOT NULL DEFAULT 0,
    mark         TEXT
  ) WITHOUT ROWID;

  CREATE TABLE wills (
    client_id    TEXT PRIMARY KEY,
    packet       TEXT NOT NULL,
    payload      BLOB,
    payload_text INTEGER NOT NULL DEFAULT 0,
    mark         TEXT
  ) WITHOUT ROWID;
  `,
  // 2: the persistent sessions themselves (client ids with CleanSession=0), also those without
  // subscriptions or queue, so that CONNACK says a session is present after a restart [MQTT-3.2.2-2].
  `
  CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY
  ) WITHOUT ROWID;
  `,
]

interface Stored {
  packet: string
  payload: Buffer | null
  payloadText: number
}

/** A packet as rows hold it: JSON without the payload (Buffers inside, e.g. MQTT 5 properties, kept). */
function toRow(packet: BrokerPacket): Stored {
  const { payload, ...rest } = packet
  return {
    packet: JSON.stringify(rest),
    payload: payload === undefined || payload === null ? null : Buffer.isBuffer(payload) ? payload : Buffer.from(String(payload)),
    payloadText: typeof payload === 'string' ? 1 : 0,
  }
}

function fromRow(r: { packet: string; payload: Buffer | null; payload_text: number }): BrokerPacket {
  const packet = JSON.parse(r.packet, (_k, v: unknown) =>
    v !== null && typeof v === 'object' && (v as { type?: unknown }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data)
      ? Buffer.from((v as { data: number[] }).data)
      : v,
  ) as BrokerPacket
  if (r.payload !== null) packet.payload = r.payload_text ? r.payload.toString('utf8') : r.payload
  return packet
}

/** A queued packet's copy as aedes' memory persistence makes it (same fields, no packet id yet, same payload object). */
function normalized(packet: BrokerPacket): BrokerPacket {
  return { ...new Packet(packet) }
}

interface OutEntry {
  seq: number
  packet: BrokerPacket
}

/** What a queued message counts against maxBytes: its topic and payload. */
function entryBytes(packet: BrokerPacket): number {
  return Buffer.byteLength(packet.topic ?? '') + (packet.payload === undefined || packet.payload === null ? 0 : Buffer.byteLength(packet.payload))
}

type Op = () => void

/**
 * aedes' persistence in SQLite. Events: 'error' (a commit failed; its writes are retried, and the
 * callers that waited for it were refused), 'queueDropped' (QueueDrop: a queue went over its limits).
 */
export class BrokerSessionStore extends EventEmitter {
  // Absent in memory only (`broker.persistence: memory`): the same memory, limits and marks, no file.
  private readonly db?: Database.Database
  private readonly st: Record<string, Statement> = {}
  private broker?: BrokerLike
  private marks?: PacketMarks
  private loaded = false
  private closed = false

  // Map(clientId -> Map(topic -> record)), and the trie of the QoS > 0 ones for matching.
  private readonly subscriptions = new Map<string, Map<string, SubRecord>>()
  private trie: Trie = new QlobberSub(QLOBBER_OPTIONS)
  private readonly retained = new Map<string, BrokerPacket>()
  private readonly outgoing = new Map<string, OutEntry[]>()
  private readonly queueBytes = new Map<string, number>()
  private readonly overflowing = new Set<string>()
  private seq = 0
  // Client ids of the persistent sessions (CleanSession=0 connections), with or without subscriptions.
  private readonly sessions = new Set<string>()
  // Map(clientId -> Map(messageId -> { packet, durable }))
  private readonly incoming = new Map<string, Map<number, { packet: BrokerPacket; durable: boolean }>>()
  private readonly wills = new Map<string, BrokerPacket>()

  // Group commit: writes waiting for the next transaction, and who waits for it.
  private ops: Op[] = []
  private waiters: { resolve: () => void; reject: (err: Error) => void }[] = []
  private readonly group = new GroupCommit(() => this.flush(), LAZY_DELAY_MS)
  private retryTimer?: NodeJS.Timeout
  private commits = 0

  /** `file` undefined: in memory only, nothing written (what `broker.persistence: memory` runs with, so its queues are bounded too). */
  constructor(
    readonly file: string | undefined,
    private readonly limits: QueueLimits = { maxMessages: Infinity, maxBytes: Infinity },
  ) {
    super()
    if (file === undefined) return
    const db = (this.db = openBrokerDatabase(file))
    const p = (sql: string): Statement => db.prepare(sql)
    this.st = {
      putSub: p('INSERT OR REPLACE INTO subscriptions (client_id, topic, record) VALUES (?, ?, ?)'),
      delSub: p('DELETE FROM subscriptions WHERE client_id = ? AND topic = ?'),
      delSubs: p('DELETE FROM subscriptions WHERE client_id = ?'),
      putOut: p('INSERT INTO outgoing (seq, client_id, packet, payload, payload_text, mark) VALUES (?, ?, ?, ?, ?, ?)'),
      setOut: p('UPDATE outgoing SET packet = ?, payload = ?, payload_text = ? WHERE seq = ?'),
      setOutMeta: p('UPDATE outgoing SET packet = ? WHERE seq = ?'),
      delOut: p('DELETE FROM outgoing WHERE seq = ?'),
      putIn: p('INSERT OR REPLACE INTO incoming (client_id, message_id, packet, payload, payload_text) VALUES (?, ?, ?, ?, ?)'),
      delIn: p('DELETE FROM incoming WHERE client_id = ? AND message_id = ?'),
      delIns: p('DELETE FROM incoming WHERE client_id = ?'),
      putRetained: p('INSERT OR REPLACE INTO retained (topic, packet, payload, payload_text, mark) VALUES (?, ?, ?, ?, ?)'),
      delRetained: p('DELETE FROM retained WHERE topic = ?'),
      putWill: p('INSERT OR REPLACE INTO wills (client_id, packet, payload, payload_text, mark) VALUES (?, ?, ?, ?, ?)'),
      delWill: p('DELETE FROM wills WHERE client_id = ?'),
      putSession: p('INSERT OR IGNORE INTO sessions (client_id) VALUES (?)'),
      delSession: p('DELETE FROM sessions WHERE client_id = ?'),
    }
  }

  /** The broker's labels for queued and retained packets (set before aedes calls setup()). */
  setMarks(marks: PacketMarks): void {
    this.marks = marks
  }

  /** aedes calls this from listen(): everything on disk is read into memory here. */
  async setup(broker: BrokerLike): Promise<void> {
    this.broker = broker
    if (!this.loaded) this.load()
    this.loaded = true
  }

  private load(): void {
    const db = this.db
    if (!db) return
    type Row = { packet: string; payload: Buffer | null; payload_text: number }
    for (const r of db.prepare('SELECT client_id, topic, record FROM subscriptions').iterate() as Iterable<{ client_id: string; topic: string; record: string }>) {
      this.setSub(r.client_id, r.topic, JSON.parse(r.record) as SubRecord)
    }
    for (const r of db.prepare('SELECT * FROM outgoing ORDER BY seq').iterate() as Iterable<Row & { seq: number; client_id: string; mark: string | null }>) {
      const packet = fromRow(r)
      if (r.mark !== null) this.marks?.restore(packet, r.mark)
      this.queueOf(r.client_id).push({ seq: r.seq, packet })
      this.addBytes(r.client_id, entryBytes(packet))
      this.seq = Math.max(this.seq, r.seq)
    }
    for (const r of db.prepare('SELECT * FROM incoming').iterate() as Iterable<Row & { client_id: string; message_id: number }>) {
      this.incomingOf(r.client_id).set(r.message_id, { packet: fromRow(r), durable: true })
    }
    for (const r of db.prepare('SELECT * FROM retained').iterate() as Iterable<Row & { topic: string; mark: string | null }>) {
      const packet = fromRow(r)
      if (r.mark !== null) this.marks?.restore(packet, r.mark)
      this.retained.set(r.topic, packet)
    }
    for (const r of db.prepare('SELECT client_id FROM sessions').iterate() as Iterable<{ client_id: string }>) this.sessions.add(r.client_id)
    for (const r of db.prepare('SELECT * FROM wills').iterate() as Iterable<Row & { client_id: string; mark: string | null }>) {
      const packet = fromRow(r)
      if (r.mark !== null) this.marks?.restore(packet, r.mark)
      this.wills.set(r.client_id, packet)
    }
  }

  /** What is kept, for the log line at start and the metrics. */
  counts(): BrokerSessionCounts {
    let queued = 0
    for (const q of this.outgoing.values()) queued += q.length
    return {
      subscriptions: this.trie.subscriptionsCount,
      clients: this.subscriptions.size,
      queued,
      retained: this.retained.size,
      wills: this.wills.size,
      overflowing: this.overflowing.size,
    }
  }

  /** Group commits made (a measure for the bench). */
  get commitCount(): number {
    return this.commits
  }

  // --- group commit

  /** Queue a write; the promise resolves once it is committed. */
  private durable(op: Op): Promise<void> {
    if (this.closed) return Promise.reject(new Error('broker sessions closed'))
    if (!this.db) return Promise.resolve()
    this.ops.push(op)
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject })
      this.schedule()
    })
  }

  /** Queue a write that may be lost in a crash: it rides along with the next commit. */
  private lazy(op: Op): void {
    if (this.closed || !this.db) return
    this.ops.push(op)
    this.group.later()
  }

  private schedule(): void {
    // After the current I/O phase: every packet read from the sockets in this turn joins the batch.
    this.group.now()
  }

  /** Commit everything waiting (public: close() and tests finish the batch in flight). */
  flush(): void {
    this.group.taken()
    const db = this.db
    if (!db || (this.ops.length === 0 && this.waiters.length === 0)) return
    const ops = this.ops
    const waiters = this.waiters
    this.ops = []
    this.waiters = []
    try {
      db.transaction(() => {
        for (const op of ops) op()
      })()
      this.commits++
    } catch (err) {
      // Memory already holds the change: the writes are tried again so that the file catches up;
      // who waited for this commit is refused (a device is not told its message is safe).
      this.ops = ops.concat(this.ops)
      for (const w of waiters) w.reject(err as Error)
      clearTimeout(this.retryTimer)
      if (!this.closed) this.retryTimer = setTimeout(() => this.flush(), RETRY_MS)
      this.retryTimer?.unref()
      this.emit('error', err)
      return
    }
    for (const w of waiters) w.resolve()
  }

  /** Commit what is waiting and close the file. */
  close(): void {
    if (this.closed) return
    clearTimeout(this.retryTimer)
    this.flush()
    this.closed = true
    this.group.cancel()
    for (const w of this.waiters) w.reject(new Error('broker sessions closed'))
    this.waiters = []
    this.db?.close()
  }

  private destroyed = false

  /** aedes-persistence's destroy(): close (the file stays). */
  async destroy(): Promise<void> {
    if (this.destroyed) throw new Error('destroyed called twice!')
    this.destroyed = true
    this.close()
  }

  // --- retained messages

  async storeRetained(pkt: BrokerPacket): Promise<void> {
    const packet = { ...pkt }
    const topic = packet.topic!
    if (!packet.payload || packet.payload.length === 0) {
      if (!this.retained.delete(topic)) return
      return this.durable(() => this.st.delRetained.run(topic))
    }
    this.retained.set(topic, packet)
    const row = toRow(packet)
    const mark = this.marks?.of(packet) ?? null
    return this.durable(() => this.st.putRetained.run(topic, row.packet, row.payload, row.payloadText, mark))
  }

  /**
   * The retained messages matching one filter, in topic order (compareTopics): a parent topic
   * before its children, the same order every time, whatever order they were retained in. The
   * spec fixes the order only within a topic [MQTT-4.6.0-5] (one retained message per topic);
   * Mosquitto sends a parent before its children too, and tools showing a tree expect it.
   */
  private retainedMatching(pattern: string): BrokerPacket[] {
    const q = new QlobberTrue(QLOBBER_OPTIONS)
    q.add(pattern, true)
    const topics: string[] = []
    for (const topic of this.retained.keys()) if (q.test(topic)) topics.push(topic)
    return topics.sort(compareTopics).map((t) => this.retained.get(t)!)
  }

  createRetainedStream(pattern: string): Readable {
    return Readable.from(this.retainedMatching(pattern))
  }

  createRetainedStreamCombi(patterns: string[]): Readable {
    const self = this
    return Readable.from(
      (function* () {
        for (const p of patterns) yield* self.retainedMatching(p)
      })(),
    )
  }

  // --- subscriptions

  /** Set one subscription in memory; true if it changed. */
  private setSub(clientId: string, topic: string, record: SubRecord): boolean {
    let stored = this.subscriptions.get(clientId)
    if (!stored) this.subscriptions.set(clientId, (stored = new Map()))
    const before = stored.get(topic)
    if (before && JSON.stringify(before) === JSON.stringify(record)) return false
    if (record.qos > 0) this.trie.add(topic, { clientId, topic, qos: record.qos, rh: record.rh, rap: record.rap, nl: record.nl })
    else if (before && before.qos > 0) this.trie.remove(topic, { clientId, topic })
    stored.set(topic, record)
    return true
  }

  async addSubscriptions(client: ClientLike, subs: BrokerSubscription[]): Promise<void> {
    const changed: [string, SubRecord][] = []
    for (const sub of subs) {
      const record: SubRecord = { qos: sub.qos, rh: sub.rh, rap: sub.rap, nl: sub.nl }
      if (sub.subscriptionIdentifier !== undefined) record.subscriptionIdentifier = sub.subscriptionIdentifier
      if (this.setSub(client.id, sub.topic, record)) changed.push([sub.topic, record])
    }
    // A persistent session's subscriptions come back through here at every reconnect: unchanged, no write.
    if (changed.length === 0) return
    return this.durable(() => {
      for (const [topic, record] of changed) this.st.putSub.run(client.id, topic, JSON.stringify(record))
    })
  }

  async removeSubscriptions(client: ClientLike, topics: string[]): Promise<void> {
    const stored = this.subscriptions.get(client.id)
    if (!stored) return
    const removed: string[] = []
    for (const topic of topics) {
      const s = stored.get(topic)
      if (s === undefined) continue
      if (s.qos > 0) this.trie.remove(topic, { clientId: client.id, topic })
      stored.delete(topic)
      removed.push(topic)
    }
    if (stored.size === 0) this.subscriptions.delete(client.id)
    if (removed.length === 0) return
    return this.durable(() => {
      for (const topic of removed) this.st.delSub.run(client.id, topic)
    })
  }

  async subscriptionsByClient(client: ClientLike): Promise<BrokerSubscription[]> {
    const stored = this.subscriptions.get(client.id)
    return stored ? [...stored].map(([topic, s]) => ({ topic, ...s })) : []
  }

  /** Every persistent session's subscriptions (the broker's shared subscriptions of sessions that are away, at start). */
  *storedSubscriptions(): Generator<{ clientId: string; topic: string; qos: number }> {
    for (const [clientId, subs] of this.subscriptions) for (const [topic, s] of subs) yield { clientId, topic, qos: s.qos }
  }

  async countOffline(): Promise<{ subsCount: number; clientsCount: number }> {
    return { subsCount: this.trie.subscriptionsCount, clientsCount: this.subscriptions.size }
  }

  /**
   * No session subscribes at QoS > 0, so no publish has anything to queue (asked synchronously by
   * the aedes patch before each QoS > 0 publish's enqueueOffline round, decision 0016).
   */
  subscribesNothing(): boolean {
    return this.trie.subscriptionsCount === 0
  }

  async subscriptionsByTopic(topic: string): Promise<object[]> {
    // aedes asks for every QoS > 0 publish; with no persistent session subscribed (the usual load)
    // there is nothing to match.
    if (this.trie.subscriptionsCount === 0) return []
    return this.trie.match(topic)
  }

  /**
   * A persistent session (a CleanSession=0 connection) exists for this client id: kept, so that
   * it is reported present after a restart even without subscriptions [MQTT-3.2.2-2]. Not waited
   * for: lost in a crash, the session is only reported absent once, as before.
   */
  keepSession(clientId: string): void {
    if (this.sessions.has(clientId)) return
    this.sessions.add(clientId)
    this.lazy(() => this.st.putSession.run(clientId))
  }

  /** The client ids of the persistent sessions kept (keepSession). */
  sessionIds(): Iterable<string> {
    return this.sessions
  }

  async cleanSubscriptions(client: ClientLike): Promise<void> {
    // aedes calls this when a client connects with a clean session: its previous session, the
    // queue too, is discarded [MQTT-3.1.2-6].
    const queue = this.dropQueue(client.id)
    const stored = this.subscriptions.get(client.id)
    const session = this.sessions.delete(client.id)
    if (session) this.lazy(() => this.st.delSession.run(client.id))
    if (!stored && !queue) return
    if (stored) for (const [topic, s] of stored) if (s.qos > 0) this.trie.remove(topic, { clientId: client.id, topic })
    this.subscriptions.delete(client.id)
    return this.durable(() => {
      this.st.delSubs.run(client.id)
      for (const e of queue ?? []) this.st.delOut.run(e.seq)
    })
  }

  getClientList(topic: string): Readable {
    const ids: string[] = []
    for (const [clientId, subs] of this.subscriptions) if (subs.has(topic)) ids.push(clientId)
    return Readable.from(ids)
  }

  // --- the queue of each persistent session (QoS 1/2 messages for it, in flight or waiting)

  private queueOf(clientId: string): OutEntry[] {
    let q = this.outgoing.get(clientId)
    if (!q) this.outgoing.set(clientId, (q = []))
    return q
  }

  private addBytes(clientId: string, n: number): void {
    this.queueBytes.set(clientId, (this.queueBytes.get(clientId) ?? 0) + n)
  }

  /** A queue emptied: its client came back (or started clean), so it no longer counts as overflowing. */
  private dropQueue(clientId: string): OutEntry[] | undefined {
    const q = this.outgoing.get(clientId)
    this.outgoing.delete(clientId)
    this.queueBytes.delete(clientId)
    this.overflowing.delete(clientId)
    return q
  }

  /** Oldest first, until the queue is within its limits again (the newest message always stays); returns the seqs dropped. */
  private bound(clientId: string, dropped: number[]): void {
    const q = this.outgoing.get(clientId)
    if (!q) return
    let bytes = this.queueBytes.get(clientId) ?? 0
    let messages = 0
    let freed = 0
    while (q.length > 1 && (q.length > this.limits.maxMessages || bytes > this.limits.maxBytes)) {
      const e = q.shift()!
      const n = entryBytes(e.packet)
      bytes -= n
      freed += n
      messages++
      dropped.push(e.seq)
    }
    if (messages === 0) return
    this.queueBytes.set(clientId, bytes)
    const first = !this.overflowing.has(clientId)
    this.overflowing.add(clientId)
    this.emit('queueDropped', { clientId, messages, bytes: freed, first } satisfies QueueDrop)
  }

  async outgoingEnqueue(sub: { clientId: string; qos?: number }, packet: BrokerPacket): Promise<void> {
    return this.outgoingEnqueueCombi([sub], packet)
  }

  async outgoingEnqueueCombi(subs: { clientId: string; qos?: number }[], packet: BrokerPacket): Promise<void> {
    if (subs.length === 0) return
    const mark = this.marks?.of(packet) ?? null
    const rows: [number, string, Stored][] = []
    const dropped: number[] = []
    for (const sub of subs) {
      const copy = normalized(packet)
      // Queued at the QoS the subscription was granted, not above it [MQTT-3.8.4-6]: aedes hands a
      // queue to a returning client as it is.
      if (sub.qos !== undefined && sub.qos < (copy.qos ?? 0)) copy.qos = sub.qos
      const seq = ++this.seq
      this.queueOf(sub.clientId).push({ seq, packet: copy })
      this.addBytes(sub.clientId, entryBytes(copy))
      this.bound(sub.clientId, dropped)
      rows.push([seq, sub.clientId, toRow(copy)])
    }
    const write = (): void => {
      for (const [seq, clientId, r] of rows) this.st.putOut.run(seq, clientId, r.packet, r.payload, r.payloadText, mark)
      for (const seq of dropped) this.st.delOut.run(seq)
    }
    // A command the core delivers waits for its device's PUBACK in the command queue anyway: its
    // delivery does not wait for an fsync here (lost in a crash, the command queue sends it again).
    if (this.marks?.heldElsewhere(packet)) return this.lazy(write)
    return this.durable(write)
  }

  async outgoingUpdate(client: ClientLike, packet: BrokerPacket): Promise<void> {
    const queue = this.outgoing.get(client.id) ?? []
    for (let i = 0; i < queue.length; i++) {
      const e = queue[i]
      if (e.packet.brokerId === packet.brokerId) {
        if (e.packet.brokerCounter === packet.brokerCounter) {
          e.packet.messageId = packet.messageId
          // QoS 1: after a restart it goes out with a new packet id, which is as good (not written);
          // except a command's: the command queue sends it again with the id kept here, DUP=1.
          // QoS 2: the same id again, or the device would take a resent PUBLISH for a new message;
          // lost in a crash, it goes out with another one (as QoS 1 would).
          if ((e.packet.qos ?? 0) < 2 && !this.marks?.heldElsewhere(e.packet)) return
          const json = toRow(e.packet).packet
          return this.lazy(() => this.st.setOutMeta.run(json, e.seq))
        }
        // Packet ids wrap at 65535: the same id with another brokerCounter is another packet.
      } else if (e.packet.messageId === packet.messageId) {
        // A PUBREL taking its PUBLISH's place (QoS 2): durable before the PUBREL is sent, or the
        // PUBLISH would go out again after a restart and be delivered twice.
        this.addBytes(client.id, entryBytes(packet) - entryBytes(e.packet))
        e.packet = { ...packet }
        const r = toRow(e.packet)
        return this.durable(() => this.st.setOut.run(r.packet, r.payload, r.payloadText, e.seq))
      }
    }
    throw new Error('no such packet')
  }

  async outgoingClearMessageId(client: ClientLike, packet: BrokerPacket): Promise<BrokerPacket | undefined> {
    // Every PUBACK of every client passes here: a clean session has no queue and costs a lookup.
    const queue = this.outgoing.get(client.id)
    if (!queue || packet?.messageId === undefined) return undefined
    const i = queue.findIndex((e) => e.packet.messageId === packet.messageId)
    if (i < 0) return undefined
    const [e] = queue.splice(i, 1)
    this.addBytes(client.id, -entryBytes(e.packet))
    if (queue.length === 0) this.dropQueue(client.id)
    // Acknowledged by the device: if this is lost in a crash, the message is sent again (QoS 1 allows it).
    this.lazy(() => this.st.delOut.run(e.seq))
    return e.packet
  }

  outgoingStream(client: ClientLike): Readable {
    // Copies, taken now: the queue may change while the stream is read (the payload is shared, as in
    // aedes' memory persistence, so the broker still recognises it).
    return Readable.from((this.outgoing.get(client.id) ?? []).map((e) => ({ ...e.packet })))
  }

  // --- incoming QoS 2 packets awaiting PUBREL

  private incomingOf(clientId: string): Map<number, { packet: BrokerPacket; durable: boolean }> {
    let m = this.incoming.get(clientId)
    if (!m) this.incoming.set(clientId, (m = new Map()))
    return m
  }

  async incomingStorePacket(client: ClientLike, packet: BrokerPacket): Promise<void> {
    const stored = new Packet(packet)
    stored.messageId = packet.messageId
    const copy = { ...stored }
    // A clean session ends with its connection: its QoS 2 state need not outlive a restart.
    const durable = client.clean !== true
    this.incomingOf(client.id).set(packet.messageId!, { packet: copy, durable })
    if (!durable) return
    const r = toRow(copy)
    return this.durable(() => this.st.putIn.run(client.id, packet.messageId, r.packet, r.payload, r.payloadText))
  }

  async incomingGetPacket(client: ClientLike, packet: BrokerPacket): Promise<BrokerPacket> {
    const e = this.incoming.get(client.id)?.get(packet.messageId!)
    if (!e) throw new Error('no such packet')
    return { ...e.packet }
  }

  async incomingDelPacket(client: ClientLike, packet: BrokerPacket): Promise<void> {
    const m = this.incoming.get(client.id)
    const e = m?.get(packet.messageId!)
    if (!m || !e) throw new Error('no such packet')
    m.delete(packet.messageId!)
    if (m.size === 0) this.incoming.delete(client.id)
    if (e.durable) return this.durable(() => this.st.delIn.run(client.id, packet.messageId))
  }

  async cleanIncoming(client: ClientLike): Promise<void> {
    const m = this.incoming.get(client.id)
    if (!m) return
    this.incoming.delete(client.id)
    if ([...m.values()].some((e) => e.durable)) return this.durable(() => this.st.delIns.run(client.id))
  }

  // --- wills

  async putWill(client: ClientLike, packet: BrokerPacket): Promise<void> {
    packet.brokerId = this.broker?.id
    packet.clientId = client.id
    this.wills.set(client.id, packet)
    const r = toRow(packet)
    const mark = this.marks?.ofClient(client) ?? null
    return this.durable(() => this.st.putWill.run(client.id, r.packet, r.payload, r.payloadText, mark))
  }

  async getWill(client: ClientLike): Promise<BrokerPacket | undefined> {
    return this.wills.get(client.id)
  }

  async delWill(client: ClientLike): Promise<BrokerPacket | undefined> {
    const will = this.wills.get(client.id)
    // Every connect asks to delete a will first: without one, no write.
    if (!will) return undefined
    this.wills.delete(client.id)
    await this.durable(() => this.st.delWill.run(client.id))
    return will
  }

  /** The wills of the brokers not listed (a previous run's broker id: the gateway died with those clients connected). */
  streamWill(brokers: Record<string, unknown> = {}): Readable {
    return Readable.from([...this.wills.values()].filter((w) => !brokers[w.brokerId as string]))
  }
}

/** broker.db opened (or made) with its layout: the store's, and the salvage's fresh copy (src/store/salvage.ts). */
export function openBrokerDatabase(file: string): Database.Database {
  mkdirSync(path.dirname(file), { recursive: true })
  const db = new Database(file)
  try {
    db.pragma('journal_mode = WAL')
    // FULL: a SUBACK, PUBREC or CONNACK is only sent once what it promises is on the platter.
    db.pragma('synchronous = FULL')
    db.pragma('busy_timeout = 5000')
    const current = db.pragma('user_version', { simple: true }) as number
    if (current > migrations.length) throw new Error(`${file} has layout ${current}, this version reads up to ${migrations.length}`)
    for (let v = current; v < migrations.length; v++) {
      db.transaction(() => {
        db.exec(migrations[v])
        db.pragma(`user_version = ${v + 1}`)
      })()
    }
    return db
  } catch (err) {
    db.close()
    throw err
  }
}

/** The same in memory only, nothing written: aedes' memory persistence with the queue limits and the broker's marks. */
export function memoryBrokerSessions(limits?: QueueLimits): BrokerSessionStore {
  return new BrokerSessionStore(undefined, limits)
}

/** Open (or make) {dataDir}/broker.db. */
export function openBrokerSessions(dataDir: string, limits?: QueueLimits): BrokerSessionStore {
  return new BrokerSessionStore(path.join(dataDir, BROKER_DB_FILE), limits)
}
