// The one encoder/parser of the cloud IoTHub topic scheme (shared/PROTOCOL.md, "Up" and "Down"),
// and the identity rules behind it. It is the core's vocabulary: adapters, the bridge, the store
// and the tools build and read topics only through these functions; nothing else in the gateway
// splits or joins a hub topic, or writes the id pattern, by hand.

export type UpKind =
  | 'upload_data'
  | 'update_status'
  | 'cmd_resp'
  | 'rpc_resp'
  | 'get'
  | 'm2m'
  | 'update_ota_status'

export type DownKind = 'cmd' | 'rpc' | 'tags' | 'm2m'

/** A parsed up topic: who sent it, what kind, and its MessageId (kept verbatim end to end). */
export interface UpTopic {
  kind: UpKind
  productId: string
  /** The device the message is about (for m2m: the sender). */
  deviceId: string
  messageId: string
  /** upload_data: DataType; cmd_resp/rpc_resp: CommandName; get: Resource. */
  name?: string
  /** cmd_resp/rpc_resp: the RequestId being answered. */
  requestId?: string
  /** m2m: the target device. */
  targetDeviceId?: string
}

export interface DownTopic {
  kind: DownKind
  productId: string
  /** cmd/rpc/m2m: the target device. */
  deviceId?: string
  /** tags: the tag. */
  tag?: string
  name?: string
  encoding?: 'plain' | 'base64'
  requestId?: string
  expiresAt?: number
  /** m2m: sender and MessageId. */
  senderDeviceId?: string
  messageId?: string
}

/** ProductId, DeviceId, tag, RequestId, MessageId (PROTOCOL.md "Identities"), as a JSON Schema pattern. */
export const ID_PATTERN = '^[A-Za-z0-9_-]{1,64}$'
/** What ID_PATTERN allows, in words for error messages. */
export const ID_RULE = '1-64 of [A-Za-z0-9_-]'
const LEVEL = new RegExp(ID_PATTERN)
// Command names, DataTypes and resources may start with `$` (internal ones, PROTOCOL.md).
const NAME = /^\$?[A-Za-z0-9_.:-]{1,64}$/
/** A command name a technician may send: no `$` (those are the protocol's own). */
export const COMMAND_NAME_PATTERN = '^[A-Za-z0-9_.:-]{1,64}$'

/** Levels never contain `/`, `+`, `#` or NUL (PROTOCOL.md, "Identities"). */
export function isId(s: string | undefined): s is string {
  return s !== undefined && LEVEL.test(s)
}

function isName(s: string | undefined): s is string {
  return s !== undefined && NAME.test(s)
}

/** Internal names (`$ntp`, `$update_shadow`, ...) belong to the protocol, not to applications. */
export const isInternalName = (name: string | undefined): boolean => name?.startsWith('$') ?? false

/** Parse a device -> hub topic; returns null for anything that is not exactly PROTOCOL.md's shape. */
export function parseUpTopic(topic: string): UpTopic | null {
  const l = topic.split('/')
  const [kind, p, d] = l
  if (!isId(p) || !isId(d)) return null
  switch (kind) {
    case 'upload_data':
    case 'get':
      if (l.length !== 5 || !isName(l[3]) || !isId(l[4])) return null
      return { kind, productId: p, deviceId: d, name: l[3], messageId: l[4] }
    case 'update_status':
    case 'update_ota_status':
      if (l.length !== 4 || !isId(l[3])) return null
      return { kind, productId: p, deviceId: d, messageId: l[3] }
    case 'cmd_resp':
    case 'rpc_resp':
      if (l.length !== 6 || !isName(l[3]) || !isId(l[4]) || !isId(l[5])) return null
      return { kind, productId: p, deviceId: d, name: l[3], requestId: l[4], messageId: l[5] }
    case 'm2m':
      // m2m/{ProductId}/{TargetDeviceId}/{SenderDeviceId}/{MessageId}
      if (l.length !== 5 || !isId(l[3]) || !isId(l[4])) return null
      return { kind, productId: p, deviceId: l[3], targetDeviceId: d, messageId: l[4] }
    default:
      return null
  }
}

export function formatUpTopic(t: UpTopic): string {
  switch (t.kind) {
    case 'upload_data':
    case 'get':
      return `${t.kind}/${t.productId}/${t.deviceId}/${t.name}/${t.messageId}`
    case 'update_status':
    case 'update_ota_status':
      return `${t.kind}/${t.productId}/${t.deviceId}/${t.messageId}`
    case 'cmd_resp':
    case 'rpc_resp':
      return `${t.kind}/${t.productId}/${t.deviceId}/${t.name}/${t.requestId}/${t.messageId}`
    case 'm2m':
      return `m2m/${t.productId}/${t.targetDeviceId}/${t.deviceId}/${t.messageId}`
  }
}

/** Parse a hub -> device topic (cmd, rpc, tags, m2m); null when malformed. */
export function parseDownTopic(topic: string): DownTopic | null {
  const l = topic.split('/')
  const kind = l[0]
  const p = l[1]
  if (!isId(p)) return null
  switch (kind) {
    case 'cmd':
    case 'rpc': {
      // {kind}/{p}/{d}/{CommandName}/{Encoding}/{RequestId}[/{ExpiresAt}]
      if (l.length !== 6 && l.length !== 7) return null
      const [, , d, name, enc, req, exp] = l
      if (!isId(d) || !isName(name) || (enc !== 'plain' && enc !== 'base64') || !isId(req)) return null
      const expiresAt = parseExpiry(exp)
      if (expiresAt === null) return null
      return { kind, productId: p, deviceId: d, name, encoding: enc, requestId: req, expiresAt }
    }
    case 'tags': {
      // tags/{p}/{Tag}/cmd/{CommandName}/{Encoding}/{RequestId}[/{ExpiresAt}]
      if (l.length !== 7 && l.length !== 8) return null
      const [, , tag, cmd, name, enc, req, exp] = l
      if (cmd !== 'cmd' || !isId(tag) || !isName(name) || (enc !== 'plain' && enc !== 'base64') || !isId(req)) return null
      const expiresAt = parseExpiry(exp)
      if (expiresAt === null) return null
      return { kind, productId: p, tag, name, encoding: enc, requestId: req, expiresAt }
    }
    case 'm2m': {
      if (l.length !== 5 || !isId(l[2]) || !isId(l[3]) || !isId(l[4])) return null
      return { kind, productId: p, deviceId: l[2], senderDeviceId: l[3], messageId: l[4] }
    }
    default:
      return null
  }
}

function parseExpiry(s: string | undefined): number | undefined | null {
  if (s === undefined) return undefined
  return /^\d{1,12}$/.test(s) ? Number(s) : null
}

export function formatDownTopic(t: DownTopic): string {
  const exp = t.expiresAt !== undefined ? `/${t.expiresAt}` : ''
  switch (t.kind) {
    case 'cmd':
    case 'rpc':
      return `${t.kind}/${t.productId}/${t.deviceId}/${t.name}/${t.encoding}/${t.requestId}${exp}`
    case 'tags':
      return `tags/${t.productId}/${t.tag}/cmd/${t.name}/${t.encoding}/${t.requestId}${exp}`
    case 'm2m':
      return `m2m/${t.productId}/${t.deviceId}/${t.senderDeviceId}/${t.messageId}`
  }
}

/** Every up kind, and the filters that catch all up traffic (what a hub listens to). */
export const UP_KINDS: readonly UpKind[] = ['upload_data', 'update_status', 'cmd_resp', 'rpc_resp', 'get', 'm2m', 'update_ota_status']
export const UP_TOPIC_FILTERS: readonly string[] = UP_KINDS.map((k) => `${k}/#`)

/** Starts like an up topic (its first level is an up kind), whether or not the rest is well formed. */
export function hasUpKind(topic: string): boolean {
  return (UP_KINDS as readonly string[]).includes(topic.slice(0, topic.indexOf('/')))
}

/** The hub's topic space (PROTOCOL.md "Up" and "Down"): the first levels it gives a meaning to. */
export const HUB_KINDS: readonly string[] = [...UP_KINDS, 'cmd', 'rpc', 'tags'] satisfies readonly (UpKind | DownKind)[]

/** Starts like a hub topic, up or down (its first level is one of HUB_KINDS). */
export function hasHubKind(topicOrFilter: string): boolean {
  const slash = topicOrFilter.indexOf('/')
  return HUB_KINDS.includes(slash < 0 ? topicOrFilter : topicOrFilter.slice(0, slash))
}

/** A tag topic or filter (`tags/...`). */
export const isTagTopic = (topic: string): boolean => topic.startsWith('tags/')

/** The MQTT username a device logs in with: `{ProductId}/{DeviceId}` (PROTOCOL.md "Identities"). */
export function parseUsername(username: string | undefined): { productId: string; deviceId: string } | null {
  const [productId, deviceId, ...rest] = (username ?? '').split('/')
  return isId(productId) && isId(deviceId) && rest.length === 0 ? { productId, deviceId } : null
}

/** The topics the hub subscribes a device to on connect ("Server-side subscriptions"). */
export function serverSideSubscriptions(productId: string, deviceId: string): string[] {
  return [`cmd/${productId}/${deviceId}/+/+/+/#`, `rpc/${productId}/${deviceId}/+/+/+/#`, `m2m/${productId}/${deviceId}/+/+`]
}

/** Topic filters a device may subscribe to itself (PROTOCOL.md ACL: its product's tag topics). */
export function mayDeviceSubscribe(productId: string, filter: string): boolean {
  const l = filter.split('/')
  // tags/{p}/{tag or +}/cmd/{...}: exactly the shape `tags/{p}/+/cmd/+/+/+/#` covers.
  if (l[0] !== 'tags' || l[1] !== productId || l.length < 4 || l[3] !== 'cmd') return false
  if (!(l[2] === '+' || isId(l[2]))) return false
  return l.slice(4).every((lvl, i, arr) => lvl === '+' || (lvl === '#' && i === arr.length - 1) || NAME.test(lvl))
}

/** The filter that carries a tag's commands (PROTOCOL.md "Tags"): what the gateway holds on the hub for a mapped child. */
export const tagFilter = (productId: string, tag: string): string => `tags/${productId}/${tag}/cmd/+/+/+/#`

/** The scope a tag command's RequestId is deduplicated in (one tag, many devices). */
export const tagScope = (productId: string, tag: string): string => `tags/${productId}/${tag}`

/** MQTT topic filter matching (`+` one level, `#` the rest, including the parent level). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/')
  const t = topic.split('/')
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return i === f.length - 1
    if (i >= t.length) return false
    if (f[i] !== '+' && f[i] !== t[i]) return false
  }
  return f.length === t.length
}

/** What is wrong with an MQTT topic filter (section 4.7), or undefined when it is well formed. */
export function filterProblem(filter: string): string | undefined {
  if (filter === '') return 'an empty topic filter'
  if (filter.includes('\u0000')) return 'a null character'
  const levels = filter.split('/')
  const hash = levels.indexOf('#')
  if (hash >= 0 && hash !== levels.length - 1) return '# must be the last level [MQTT-4.7.1-2]'
  if (levels.some((l) => l !== '+' && l !== '#' && /[+#]/.test(l))) return '+ and # must stand alone in their level [MQTT-4.7.1-2/3]'
  return undefined
}

/**
 * Whether every topic `filter` matches is also matched by `within` (both well formed): a client
 * granted `within` may subscribe to `filter`. Topics starting with `$` are matched only by a filter
 * that names their first level [MQTT-4.7.2-1].
 */
export function filterCovers(within: string, filter: string): boolean {
  const w = within.split('/')
  const f = filter.split('/')
  if (f[0].startsWith('$') && (w[0] === '+' || w[0] === '#')) return false
  for (let i = 0; i < w.length; i++) {
    if (w[i] === '#') return true
    if (i >= f.length) return false
    if (f[i] === '#') return false
    if (w[i] !== '+' && w[i] !== f[i]) return false
  }
  // `a/#` also matches `a` [MQTT-4.7.1-2]; `a/+` does not.
  return f.length === w.length
}
