// The MQTT 3.1.1 checks aedes 1.x leaves out, applied to every decoded packet of every connection
// (both zones) before aedes sees it. A packet that breaks one of them closes the connection, as the
// spec asks ("MUST close the Network Connection"), and nothing of it reaches aedes: no session, no
// will, no publish. The one refusal that answers first is an empty client id with CleanSession=0,
// which gets CONNACK 0x02 [MQTT-3.1.3-8]. A fixed header that announces a length its packet cannot
// have (or anything but CONNECT first) closes the connection at once, before the body is waited
// for and buffered. docs/integrators/mqtt-conformance.md lists them all.
//
// Strings are checked on their bytes: mqtt-packet decodes them lossily (ill-formed UTF-8 becomes
// U+FFFD), so the guard wraps the connection's parser's string reader and remembers, per packet,
// the first string that is not well-formed UTF-8 or holds a character the spec forbids.
import { isUtf8 } from 'node:buffer'
import type { Client } from 'aedes'

export interface Violation {
  /** the spec statement broken, e.g. `MQTT-3.1.3-8` */
  rule: string
  /** what was wrong, for the log (never the offending bytes themselves) */
  what: string
  /** the packet type it was found in */
  cmd: string
  /** the CONNACK return code sent before closing, if any */
  connack?: number
}

// The decoded packet as mqtt-packet hands it over (only what the checks read).
interface Packet {
  cmd: string
  protocolVersion?: number
  clientId?: string
  clean?: boolean
  username?: string
  password?: Buffer
  will?: { topic?: string; qos?: number } | null
  length?: number
  topic?: string
  qos?: number
  dup?: boolean
  messageId?: number
  subscriptions?: { topic: string }[]
  unsubscriptions?: string[]
  /** MQTT 5 (broker.mqtt5) */
  properties?: { topicAlias?: number }
}

// The parts of mqtt-packet's Parser (9.x) the guard hooks. Private API of a pinned version: the
// conformance tests fail if an upgrade moves it.
interface Parser {
  packet: Packet
  error: Error | null
  _pos: number
  _parsePayload(): boolean
  _list: { slice(start: number, end: number): Buffer; readUInt8(offset: number): number; consume(bytes: number): void }
  _parseHeader(): boolean
  _parseLength(): boolean
  _parseString(maybeBuffer?: boolean): string | null
  listeners(event: 'packet' | 'error'): ((arg: never) => void)[]
  removeAllListeners(event: 'packet' | 'error'): void
  on(event: 'packet', fn: (packet: Packet) => void): void
  on(event: 'error', fn: (err: Error) => void): void
}

const UNACCEPTABLE_PROTOCOL_VERSION = 1
const IDENTIFIER_REJECTED = 2
// MQTT 5 (broker.mqtt5): Client Identifier not valid, no properties (MQTT 5 section 3.2.2.2).
const CLIENT_IDENTIFIER_NOT_VALID_V5 = 0x85
const connack = (returnCode: number, protocolVersion?: number): Buffer =>
  protocolVersion === 5 ? Buffer.from([0x20, 0x03, 0x00, CLIENT_IDENTIFIER_NOT_VALID_V5, 0x00]) : Buffer.from([0x20, 0x02, 0x00, returnCode])

/** What a listener's guard is told by the configuration. */
export interface GuardOptions {
  /**
   * `broker.allowEmptyClientId`: false refuses an empty client id whatever CleanSession says
   * (CONNACK 0x02), as Mosquitto's `allow_zero_length_clientid false`. [MQTT-3.1.3-6] lets a
   * server accept it with CleanSession=1 (and assign an id): true, the default, does.
   */
  allowEmptyClientId?: boolean
}
// Packets whose variable header and payload mqtt-packet reads to the end: anything left over is
// malformed (a field its flag does not announce [MQTT-3.1.2-18/20/22], a too long PUBACK, ...).
// A PUBLISH's payload is simply the rest, so it cannot have a remainder.
const READ_TO_THE_END = new Set(['connect', 'puback', 'pubrec', 'pubrel', 'pubcomp', 'subscribe', 'unsubscribe', 'pingreq', 'disconnect'])
// MQTT 3.1 (sections 3.6, 3.8, 3.10 of its spec) has the client set DUP on a PUBREL, SUBSCRIBE or
// UNSUBSCRIBE it sends again; 3.1.1 reserved that bit [MQTT-2.2.2-1] and mqtt-packet refuses it for
// every level. On a 3.1 connection these first bytes are read as the packet they are, DUP set.
const DUP_IN_MQTT31: ReadonlyMap<number, string> = new Map([
  [0x6a, 'pubrel'],
  [0x8a, 'subscribe'],
  [0xaa, 'unsubscribe'],
])
// The longest CONNECT its fields allow: the MQIsdp variable header (12 bytes) and five strings of
// at most 65535 bytes (client id, will topic, will message, user name, password).
const MAX_CONNECT_LENGTH = 12 + 5 * (2 + 0xffff)
// What a client sends in MQTT 3.1.1 (section 2.2.1): type 0 is forbidden, 15 reserved, the rest
// go from the server to the client.
const FROM_CLIENT = new Set(['connect', 'publish', 'puback', 'pubrec', 'pubrel', 'pubcomp', 'subscribe', 'unsubscribe', 'pingreq', 'disconnect'])
// Packets whose remaining length the spec fixes (MQTT 3.1.1 sections 3.4-3.7, 3.12, 3.14).
const FIXED_LENGTH: ReadonlyMap<string, number> = new Map([
  ['puback', 2],
  ['pubrec', 2],
  ['pubrel', 2],
  ['pubcomp', 2],
  ['pingreq', 0],
  ['disconnect', 0],
])

/**
 * What is wrong with a packet as soon as its fixed header is read, before its body arrives, or
 * null: a client must not make the broker wait for (and hold) bytes it will refuse anyway.
 */
export function headerViolation(cmd: string, length: number, connected: boolean): { rule: string; what: string } | null {
  if (!connected && cmd !== 'connect') return { rule: 'MQTT-3.1.0-1', what: 'a packet before CONNECT' }
  if (!FROM_CLIENT.has(cmd)) return { rule: 'MQTT-4.8.0-1', what: `a packet of type ${cmd}, which a client never sends` }
  if (cmd === 'connect' && length > MAX_CONNECT_LENGTH) return { rule: 'MQTT-4.8.0-1', what: `a CONNECT of ${length} bytes, longer than its fields can be` }
  const fixed = FIXED_LENGTH.get(cmd)
  if (fixed !== undefined && length !== fixed) return { rule: 'MQTT-4.8.0-1', what: `a remaining length of ${length} (${fixed} for ${cmd})` }
  return null
}

const validId = (id: number | undefined): boolean => id !== undefined && id >= 1 && id <= 0xffff

/**
 * Why the bytes of one MQTT string may not stand, or null: ill-formed UTF-8 (including encoded
 * surrogates) [MQTT-1.5.3-1], U+0000 [MQTT-1.5.3-2], or a control character U+0001-U+001F /
 * U+007F-U+009F, which section 1.5.3 lets a receiver close the connection for (Mosquitto does).
 */
export function badStringReason(bytes: Buffer, decoded?: string): { rule: string; what: string } | null {
  if (!isUtf8(bytes)) return { rule: 'MQTT-1.5.3-1', what: 'ill-formed UTF-8' }
  const s = decoded ?? bytes.toString('utf8')
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c === 0) return { rule: 'MQTT-1.5.3-2', what: 'the null character U+0000' }
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) return { rule: 'MQTT-1.5.3', what: 'a control character' }
  }
  return null
}

const hasWildcard = (topic: string): boolean => topic.includes('+') || topic.includes('#')

/**
 * A string mqtt-packet decoded that is printable ASCII throughout (a topic, usually) came from
 * well-formed bytes: an ill-formed sequence would have been decoded as U+FFFD. Such a string needs
 * no second look at its bytes.
 */
function printableAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x20 || c >= 0x7f) return false
  }
  return true
}

/** The first rule a decoded packet breaks (strings aside), or null. */
export function packetViolation(p: Packet, opts: GuardOptions = {}): Omit<Violation, 'cmd'> | null {
  switch (p.cmd) {
    case 'connect':
      // [MQTT-3.1.3-6] lets a server take an empty client id; one that rejects it answers 0x02 [MQTT-3.1.3-9] (MQTT 5: 0x85).
      if (p.clientId === '' && opts.allowEmptyClientId === false) {
        return { rule: 'MQTT-3.1.3-9', what: 'an empty client id (broker.allowEmptyClientId is false)', connack: IDENTIFIER_REJECTED }
      }
      // MQTT 5 lets the server assign an id whatever Clean Start says [MQTT-3.1.3-6]: aedes 2 does.
      if (p.clientId === '' && p.protocolVersion !== 5 && (p.clean === false || p.protocolVersion === 3)) {
        return { rule: 'MQTT-3.1.3-8', what: 'an empty client id needs CleanSession=1', connack: IDENTIFIER_REJECTED }
      }
      if (p.password !== undefined && p.username === undefined) return { rule: 'MQTT-3.1.2-22', what: 'a password without a user name' }
      if (p.will) {
        if ((p.will.qos ?? 0) > 2) return { rule: 'MQTT-3.1.2-14', what: 'will QoS 3' }
        if (!p.will.topic) return { rule: 'MQTT-4.7.3-1', what: 'an empty will topic' }
        if (hasWildcard(p.will.topic)) return { rule: 'MQTT-3.3.2-2', what: 'a wildcard in the will topic' }
      }
      return null
    case 'publish':
      // MQTT 5: an empty topic stands for the Topic Alias it carries (aedes 2 checks the alias).
      if (!p.topic && p.properties?.topicAlias === undefined) return { rule: 'MQTT-4.7.3-1', what: 'an empty topic name' }
      if (hasWildcard(p.topic ?? '')) return { rule: 'MQTT-3.3.2-2', what: 'a wildcard in a topic name' }
      if (p.qos === 0 && p.dup) return { rule: 'MQTT-3.3.1-2', what: 'DUP set on a QoS 0 message' }
      if ((p.qos ?? 0) > 0 && !validId(p.messageId)) return { rule: 'MQTT-2.3.1-1', what: 'packet identifier 0' }
      return null
    case 'subscribe':
    case 'unsubscribe': {
      if (!validId(p.messageId)) return { rule: 'MQTT-2.3.1-1', what: 'packet identifier 0' }
      const filters = p.cmd === 'subscribe' ? (p.subscriptions ?? []).map((s) => s.topic) : (p.unsubscriptions ?? [])
      if (filters.length === 0) return { rule: p.cmd === 'subscribe' ? 'MQTT-3.8.3-3' : 'MQTT-3.10.3-2', what: 'no topic filter' }
      if (filters.some((f) => !f)) return { rule: 'MQTT-4.7.3-1', what: 'an empty topic filter' }
      return null
    }
    case 'puback':
    case 'pubrec':
    case 'pubrel':
    case 'pubcomp':
      if (!validId(p.messageId)) return { rule: 'MQTT-2.3.1-1', what: 'packet identifier 0' }
      return null
    default:
      return null
  }
}

/** What the guard keeps per connection: one object, read by functions shared by every connection. */
interface GuardState {
  socket: { write(data: Buffer, done: () => void): void; destroy(): void }
  refused: (v: Violation) => void
  opts: GuardOptions
  /** aedes' own 'packet' and 'error' listeners, called once the guard has let a packet through */
  onward: ((packet: Packet) => void)[]
  failed: ((err: Error) => void)[]
  /** the protocol level of the connection's accepted CONNECT */
  level: number | undefined
  closed: boolean
  first: boolean
  /** the packet being parsed, when one of its fields was found wrong while reading it, and why */
  markedPacket: Packet | null
  mark: { rule: string; what: string } | null
  /** the parser's own readers, which the guarded ones call */
  readers: Readers
}

const GUARD = Symbol('iothub-edge packet guard')
type GuardedParser = Parser & { [GUARD]: GuardState }

// The parser's own readers, taken once from its class's prototype (aedes and aedes 2 may bring
// different mqtt-packet versions). The guarded ones below are set on each connection's parser; they
// are module-level functions, not closures, so that a connection costs one GuardState and no
// functions of its own (docs/performance.md, "What an idle authenticated device costs").
type Readers = Pick<Parser, '_parsePayload' | '_parseString' | '_parseHeader' | '_parseLength'>
const readersOf = new WeakMap<object, Readers>()

function markOnce(g: GuardState, packet: Packet, why: { rule: string; what: string }): void {
  if (g.markedPacket === packet) return
  g.markedPacket = packet
  g.mark = why
}

function guardedParsePayload(this: GuardedParser): boolean {
  const done = this[GUARD].readers._parsePayload.call(this)
  const p = this.packet
  if (done && !this.error && READ_TO_THE_END.has(p.cmd) && this._pos !== p.length) {
    markOnce(this[GUARD], p, { rule: 'MQTT-4.8.0-1', what: `${(p.length ?? 0) - this._pos} byte(s) more than its fields hold` })
  }
  return done
}

function guardedParseString(this: GuardedParser, maybeBuffer?: boolean): string | null {
  const start = this._pos + 2
  const result = this[GUARD].readers._parseString.call(this, maybeBuffer)
  const g = this[GUARD]
  if (result !== null && !(typeof result === 'string' && printableAscii(result)) && g.markedPacket !== this.packet) {
    const reason = badStringReason(this._list.slice(start, this._pos), typeof result === 'string' ? result : undefined)
    if (reason) markOnce(g, this.packet, { rule: reason.rule, what: `${reason.what} in a string` })
  }
  return result
}

function guardedParseHeader(this: GuardedParser): boolean {
  const cmd = this[GUARD].level === 3 ? DUP_IN_MQTT31.get(this._list.readUInt8(0)) : undefined
  if (cmd === undefined) return this[GUARD].readers._parseHeader.call(this)
  Object.assign(this.packet, { cmd, qos: 1, dup: true, retain: false })
  this._list.consume(1)
  return true
}

function guardedParseLength(this: GuardedParser): boolean {
  const done = this[GUARD].readers._parseLength.call(this)
  const g = this[GUARD]
  if (!done || g.closed) return done
  const v = headerViolation(this.packet.cmd, this.packet.length ?? 0, g.level !== undefined)
  if (!v) return true
  refuse(g, v, this.packet.cmd)
  return false // nothing more of this connection is parsed
}

function refuse(g: GuardState, v: Omit<Violation, 'cmd'>, cmd: string, protocolVersion?: number): void {
  g.closed = true
  // The CONNACK goes out before the close [MQTT-3.2.2-5].
  if (v.connack !== undefined) g.socket.write(connack(v.connack, protocolVersion), () => g.socket.destroy())
  else g.socket.destroy()
  g.refused({ ...v, cmd })
}

// A CONNECT of a protocol level aedes does not speak is a parse error in mqtt-packet; the spec
// wants CONNACK 0x01 before the close [MQTT-3.1.2-2].
function onParseError(this: GuardedParser, err: Error): void {
  const g = this[GUARD]
  const forward = (): void => {
    for (const fn of g.failed) fn.call(this, err)
  }
  if (g.first && !g.closed && err.message === 'Invalid protocol version') {
    g.closed = true
    g.socket.write(connack(UNACCEPTABLE_PROTOCOL_VERSION), forward)
    g.refused({ rule: 'MQTT-3.1.2-2', what: 'a protocol level other than 3 (3.1) or 4 (3.1.1)', cmd: 'connect', connack: UNACCEPTABLE_PROTOCOL_VERSION })
  } else forward()
}

function onPacket(this: GuardedParser, packet: Packet): void {
  const g = this[GUARD]
  if (g.closed) return
  g.first = false
  const marked = g.markedPacket === packet ? g.mark : null
  g.markedPacket = g.mark = null
  const v: Omit<Violation, 'cmd'> | null = marked ?? packetViolation(packet, g.opts)
  if (!v) {
    if (packet.cmd === 'connect') g.level ??= packet.protocolVersion
    for (const fn of g.onward) fn.call(this, packet)
    return
  }
  refuse(g, v, packet.cmd, packet.protocolVersion)
}

/**
 * Put the checks in front of one aedes client (right after `aedes.handle(socket)`). `refused`
 * hears each violation once, after the connection is closed.
 */
export function guardClient(client: Client, refused: (v: Violation) => void, opts: GuardOptions = {}): void {
  const parser = (client as unknown as { _parser: GuardedParser })._parser
  const proto = Object.getPrototypeOf(parser) as Parser
  let readers = readersOf.get(proto)
  if (!readers) readersOf.set(proto, (readers = { _parsePayload: proto._parsePayload, _parseString: proto._parseString, _parseHeader: proto._parseHeader, _parseLength: proto._parseLength }))
  const onward = parser.listeners('packet') as ((packet: Packet) => void)[]
  parser.removeAllListeners('packet')
  const failed = parser.listeners('error') as ((err: Error) => void)[]
  parser.removeAllListeners('error')
  parser[GUARD] = {
    socket: client.conn as unknown as GuardState['socket'],
    refused,
    opts,
    onward,
    failed,
    level: undefined,
    closed: false,
    first: true,
    markedPacket: null,
    mark: null,
    readers,
  }
  parser._parsePayload = guardedParsePayload
  parser._parseString = guardedParseString
  parser._parseHeader = guardedParseHeader
  parser._parseLength = guardedParseLength
  parser.on('error', onParseError)
  parser.on('packet', onPacket)
}
