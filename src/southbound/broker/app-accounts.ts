// Local application accounts (`broker.apps`): on-site consumers (SCADA, Home Assistant, Node-RED, a
// dashboard) log in on an external listener with a user name and a password whose scrypt hash is in
// the config, and may publish and subscribe only within their own topic filters. They are not
// devices: what they publish stays on the local broker (never the outbox, never the hub), and the
// hub's topic space is closed to their publishes, so nothing they send can pass for a device's
// uplink or reach a device as a command.
import { Type, type Static } from '@sinclair/typebox'
import { VerifiedPasswords, isPasswordHash } from '../../core/password-hash.js'
import { filterCovers, filterProblem, hasHubKind, HUB_KINDS } from '../../core/hub-topics.js'

// No `/`: a device's user name is always `{ProductId}/{DeviceId}`, so the two can never be confused.
export const APP_USERNAME_PATTERN = '^[A-Za-z0-9_.@-]{1,64}$'

export const AppAccountSchema = Type.Object(
  {
    username: Type.String({ pattern: APP_USERNAME_PATTERN, description: 'the MQTT user name: 1-64 of [A-Za-z0-9_.@-] (no `/`, which device user names have)' }),
    passwordHash: Type.String({
      description: 'scrypt hash of the password, `scrypt$N$r$p$salt$hash`, made by `iothub-edge hash-password` (never the password itself)',
    }),
    publish: Type.Array(Type.String(), {
      default: [],
      description: "topic filters it may publish on; never the hub's topic space (upload_data, update_status, cmd, rpc, tags, m2m, ...): its messages stay on the local broker",
    }),
    subscribe: Type.Array(Type.String(), {
      default: [],
      description: "topic filters it may subscribe within: e.g. `upload_data/#` (device data), a rule's `republish` topics (`site/#`); `#` does not include `$SYS`",
    }),
  },
  { additionalProperties: false, description: 'a local application account' },
)

export type AppAccount = Static<typeof AppAccountSchema>

/** Rules across keys that the schema cannot say, as `broker.apps[i].key: problem` lines. */
export function checkAppAccounts(apps: readonly AppAccount[], at = 'broker.apps'): string[] {
  const problems: string[] = []
  const names = new Set<string>()
  apps.forEach((a, i) => {
    if (names.has(a.username)) problems.push(`${at}[${i}].username: "${a.username}" is used twice`)
    names.add(a.username)
    if (!isPasswordHash(a.passwordHash)) problems.push(`${at}[${i}].passwordHash: not a hash made by \`iothub-edge hash-password\` (scrypt$N$r$p$salt$hash); never put the password itself here`)
    for (const key of ['publish', 'subscribe'] as const) {
      a[key].forEach((f, j) => {
        const problem = filterProblem(f)
        if (problem) problems.push(`${at}[${i}].${key}[${j}]: "${f}" is not a topic filter: ${problem}`)
        else if (key === 'publish' && hasHubKind(f))
          problems.push(
            `${at}[${i}].publish[${j}]: "${f}" is in the hub's topic space (${HUB_KINDS.join(', ')}): an app's messages are not device uplinks or commands; publish on a topic of your own (e.g. scada/#)`,
          )
      })
    }
  })
  return problems
}

/** The accounts of one run, by user name, with their password checks. */
export class AppAccounts {
  private readonly byName: ReadonlyMap<string, AppAccount>
  private readonly passwords = new VerifiedPasswords()

  constructor(apps: readonly AppAccount[]) {
    this.byName = new Map(apps.map((a) => [a.username, a]))
  }

  get(username: string | undefined): AppAccount | undefined {
    return username === undefined ? undefined : this.byName.get(username)
  }

  /** The password checked against the account's hash (scrypt once, then constant-time HMAC compares). */
  verify(app: AppAccount, password: string): Promise<boolean> {
    return this.passwords.check(app.username, password, app.passwordHash)
  }
}

/**
 * May the app publish on `topic`? Within its publish filters, never in the hub's topic space (a
 * wide filter such as `#` does not open it) and never `$SYS` (the broker's own, for every client).
 */
export function mayAppPublish(app: AppAccount, topic: string): boolean {
  if (hasHubKind(topic) || topic.startsWith('$SYS')) return false
  return app.publish.some((f) => filterCovers(f, topic))
}

/** May the app subscribe to `filter`? Only if one of its subscribe filters covers every topic it matches. */
export function mayAppSubscribe(app: AppAccount, filter: string): boolean {
  return app.subscribe.some((f) => filterCovers(f, filter))
}

/** May the app receive a message on `topic` (its subscribe filters, read again at delivery)? */
export const mayAppReceive = mayAppSubscribe
