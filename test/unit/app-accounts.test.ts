// broker.apps (docs/operators/local-apps.md): what the config accepts, with key paths for what it
// does not, and what an account's filters let it publish, subscribe to and receive.
import { describe, expect, it } from 'vitest'
import { ConfigError, parseConfig } from '../../src/config.js'
import { hashPassword } from '../../src/core/password-hash.js'
import { mayAppPublish, mayAppReceive, mayAppSubscribe, type AppAccount } from '../../src/southbound/broker/app-accounts.js'

function problems(doc: unknown): string[] {
  try {
    parseConfig(doc)
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  return []
}

// Small scrypt parameters: the format is what is checked here, not the cost.
const hash = await hashPassword('a-long-enough-password', { N: 1024, r: 8, p: 1 })

describe('broker.apps config', () => {
  it('is an empty list by default and takes an account with its filters', () => {
    expect(parseConfig({}).broker.apps).toEqual([])
    const cfg = parseConfig({ broker: { apps: [{ username: 'scada', passwordHash: hash, subscribe: ['upload_data/#'] }] } })
    expect(cfg.broker.apps).toEqual([{ username: 'scada', passwordHash: hash, publish: [], subscribe: ['upload_data/#'] }])
  })

  it('refuses a user name shaped like a device’s, with its key path', () => {
    expect(problems({ broker: { apps: [{ username: 'boiler/b1', passwordHash: hash }] } })).toEqual([
      'broker.apps[0].username: must be 1-64 of [A-Za-z0-9_.@-], without "/" (a user name with "/", {ProductId}/{DeviceId}, is a device\'s)',
    ])
  })

  it('names every bad filter, hub-topic publish filter, clear password and duplicate at once', () => {
    const p = problems({
      broker: {
        apps: [
          { username: 'scada', passwordHash: 'hunter2-in-clear', publish: ['upload_data/#', 'cmd/+/+/#', 'a/#/b', '#'], subscribe: ['site/+x', '', 'upload_data/#'] },
          { username: 'scada', passwordHash: hash },
        ],
      },
    })
    expect(p).toEqual([
      'broker.apps[0].passwordHash: not a hash made by `iothub-edge hash-password` (scrypt$N$r$p$salt$hash); never put the password itself here',
      expect.stringMatching(/^broker\.apps\[0\]\.publish\[0\]: "upload_data\/#" is in the hub's topic space/),
      expect.stringMatching(/^broker\.apps\[0\]\.publish\[1\]: "cmd\/\+\/\+\/#" is in the hub's topic space/),
      'broker.apps[0].publish[2]: "a/#/b" is not a topic filter: # must be the last level [MQTT-4.7.1-2]',
      'broker.apps[0].subscribe[0]: "site/+x" is not a topic filter: + and # must stand alone in their level [MQTT-4.7.1-2/3]',
      'broker.apps[0].subscribe[1]: "" is not a topic filter: an empty topic filter',
      'broker.apps[1].username: "scada" is used twice',
    ])
  })
})

describe('an app account’s ACL', () => {
  const app: AppAccount = { username: 'ha', passwordHash: hash, publish: ['homeassistant/#', 'site/+/set'], subscribe: ['upload_data/boiler/#', 'site/#', '$SYS/broker/#'] }
  const wide: AppAccount = { username: 'wide', passwordHash: hash, publish: ['#'], subscribe: ['#'] }

  it('publishes within its filters, never in the hub topic space or $SYS, whatever the filter', () => {
    expect(mayAppPublish(app, 'homeassistant/light/on')).toBe(true)
    expect(mayAppPublish(app, 'homeassistant')).toBe(true) // `a/#` matches `a` [MQTT-4.7.1-2]
    expect(mayAppPublish(app, 'site/boiler/set')).toBe(true)
    expect(mayAppPublish(app, 'site/boiler/other')).toBe(false)
    expect(mayAppPublish(wide, 'anything/at/all')).toBe(true)
    for (const t of ['upload_data/boiler/b1/temperature/0123', 'update_status/p/d/m', 'cmd/p/d/open/plain/r1', 'rpc/p/d/x/plain/r', 'tags/p/t/cmd/x/plain/r', 'm2m/p/d/s/m', 'get/p/d/$ntp/m', '$SYS/x']) {
      expect(mayAppPublish(wide, t), t).toBe(false)
    }
  })

  it('subscribes only to filters its own cover; `#` and `+` never reach $ topics', () => {
    expect(mayAppSubscribe(app, 'upload_data/boiler/b1/temperature/+')).toBe(true)
    expect(mayAppSubscribe(app, 'upload_data/boiler/#')).toBe(true)
    expect(mayAppSubscribe(app, 'upload_data/#')).toBe(false)
    expect(mayAppSubscribe(app, 'upload_data/+/b1/#')).toBe(false)
    expect(mayAppSubscribe(app, 'site')).toBe(true)
    expect(mayAppSubscribe(app, '$SYS/broker/clients')).toBe(true)
    expect(mayAppSubscribe(app, '$SYS/#')).toBe(false)
    expect(mayAppSubscribe(wide, '#')).toBe(true)
    expect(mayAppSubscribe(wide, '$SYS/#')).toBe(false)
    expect(mayAppSubscribe({ ...wide, subscribe: ['a/+'] }, 'a')).toBe(false)
    expect(mayAppReceive(app, 'upload_data/boiler/b1/temperature/0123')).toBe(true)
    expect(mayAppReceive(app, 'upload_data/tank/t1/level/0123')).toBe(false)
    expect(mayAppReceive(wide, '$SYS/broker/uptime')).toBe(false)
  })
})
