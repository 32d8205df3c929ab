import { describe, expect, it } from 'vitest'
import {
  formatDownTopic,
  formatUpTopic,
  mayDeviceSubscribe,
  parseDownTopic,
  parseUpTopic,
} from '../../src/core/hub-topics.js'
import { priorityOf } from '../../src/store/outbox.js'

const MID = '65a1b2c3d4e5f60718293a4b'

describe('hub-topics: up topics (PROTOCOL.md "Up")', () => {
  const good = [
    `upload_data/p1/d1/temperature/${MID}`,
    `upload_data/p1/d1/$shadow_reported/${MID}`,
    `update_status/p1/d1/${MID}`,
    `cmd_resp/p1/d1/reboot/req-1/${MID}`,
    `rpc_resp/p1/d1/read/req-2/${MID}`,
    `get/p1/d1/$ntp/${MID}`,
    `m2m/p1/target/sender/${MID}`,
    `update_ota_status/p1/d1/${MID}`,
  ]
  it.each(good)('round-trips %s unchanged', (topic) => {
    const t = parseUpTopic(topic)
    expect(t).not.toBeNull()
    expect(formatUpTopic(t!)).toBe(topic)
  })

  it('keeps the MessageId verbatim and names the sender of an m2m', () => {
    expect(parseUpTopic(`m2m/p1/target/sender/${MID}`)).toMatchObject({ deviceId: 'sender', targetDeviceId: 'target', messageId: MID })
  })

  it.each([
    'upload_data/p1/d1/temperature', // missing MessageId
    `upload_data/p1/d1/temperature/${MID}/extra`,
    `update_status/p1/${MID}`,
    `cmd_resp/p1/d1/reboot/${MID}`,
    `upload_data/p1//t/${MID}`,
    `upload_data/p 1/d1/t/${MID}`,
    `upload_data/${'x'.repeat(65)}/d1/t/${MID}`,
    `unknown/p1/d1/${MID}`,
    '',
  ])('refuses malformed %j', (topic) => {
    expect(parseUpTopic(topic)).toBeNull()
  })

  it('orders priorities: replies, then control and internal data, then telemetry', () => {
    expect(priorityOf(parseUpTopic(`rpc_resp/p/d/x/r/${MID}`)!)).toBe(0)
    expect(priorityOf(parseUpTopic(`cmd_resp/p/d/x/r/${MID}`)!)).toBe(0)
    expect(priorityOf(parseUpTopic(`update_status/p/d/${MID}`)!)).toBe(1)
    expect(priorityOf(parseUpTopic(`upload_data/p/d/$connection/${MID}`)!)).toBe(1)
    expect(priorityOf(parseUpTopic(`get/p/d/$ntp/${MID}`)!)).toBe(1)
    expect(priorityOf(parseUpTopic(`upload_data/p/d/temp/${MID}`)!)).toBe(2)
  })
})

describe('hub-topics: down topics (PROTOCOL.md "Down")', () => {
  it('parses commands with and without ExpiresAt', () => {
    expect(parseDownTopic('cmd/p1/d1/reboot/plain/r1')).toEqual({
      kind: 'cmd', productId: 'p1', deviceId: 'd1', name: 'reboot', encoding: 'plain', requestId: 'r1', expiresAt: undefined,
    })
    expect(parseDownTopic('rpc/p1/d1/read/base64/r2/1700000000')).toMatchObject({ kind: 'rpc', expiresAt: 1700000000 })
    expect(parseDownTopic('tags/p1/floor2/cmd/$ota_upgrade/plain/r3')).toMatchObject({ kind: 'tags', tag: 'floor2', name: '$ota_upgrade' })
    expect(parseDownTopic('m2m/p1/d1/d2/m1')).toMatchObject({ kind: 'm2m', deviceId: 'd1', senderDeviceId: 'd2', messageId: 'm1' })
  })

  it.each(['cmd/p1/d1/reboot/gzip/r1', 'cmd/p1/d1/reboot/plain', 'cmd/p1/d1/reboot/plain/r1/soon', 'tags/p1/t/xcmd/n/plain/r', 'rpc/p1/d1/a/plain/r/1/2'])(
    'refuses malformed %j',
    (topic) => expect(parseDownTopic(topic)).toBeNull(),
  )

  it('formats what it parses', () => {
    for (const t of ['cmd/p/d/n/plain/r', 'rpc/p/d/n/base64/r/99', 'tags/p/t/cmd/n/plain/r/5', 'm2m/p/a/b/m']) {
      expect(formatDownTopic(parseDownTopic(t)!)).toBe(t)
    }
  })
})

describe('hub-topics: what a device may subscribe to (PROTOCOL.md ACL)', () => {
  it('allows its own product tag topics only', () => {
    expect(mayDeviceSubscribe('p1', 'tags/p1/+/cmd/+/+/+/#')).toBe(true)
    expect(mayDeviceSubscribe('p1', 'tags/p1/floor2/cmd/+/+/+/#')).toBe(true)
    expect(mayDeviceSubscribe('p1', 'tags/p2/floor2/cmd/+/+/+/#')).toBe(false)
    expect(mayDeviceSubscribe('p1', 'cmd/p1/d2/+/+/+/#')).toBe(false)
    expect(mayDeviceSubscribe('p1', '#')).toBe(false)
    expect(mayDeviceSubscribe('p1', '$SYS/#')).toBe(false)
    expect(mayDeviceSubscribe('p1', 'tags/#')).toBe(false)
  })
})
