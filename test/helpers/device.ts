// A device as the device SDK would be one on the wire: MQTT 3.1.1, username {p}/{d}, the Secret as
// password (PROTOCOL.md "Identities"). Used against the hub broker and the gateway's broker alike.
import { randomBytes } from 'node:crypto'
import mqtt, { type MqttClient } from 'mqtt'

export interface DeviceLogin {
  productId: string
  deviceId: string
  secret: string
  /** default {p}/{d}/{random suffix}, as the SDK does */
  clientId?: string
  /** default true */
  clean?: boolean
  keepalive?: number
}

/** Error from a refused connection; `code` is the CONNACK return code (4 bad credentials, 5 not authorised). */
export interface ConnectError extends Error {
  code?: number | string
}

export function connectDevice(url: string, login: DeviceLogin): Promise<MqttClient> {
  const username = `${login.productId}/${login.deviceId}`
  const client = mqtt.connect(url, {
    protocolVersion: 4, // the gateway's broker (aedes) does not take MQTT 5
    username,
    password: login.secret,
    clientId: login.clientId ?? `${username}/${randomBytes(4).toString('hex')}`,
    clean: login.clean ?? true,
    keepalive: login.keepalive ?? 60,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
  })
  return new Promise((resolve, reject) => {
    const onConnect = (): void => {
      cleanup()
      // Without a listener a later socket error would be thrown and take the test worker down;
      // tests that care add their own listener or see the failure on their next publish.
      client.on('error', () => undefined)
      resolve(client)
    }
    const onError = (err: ConnectError): void => {
      cleanup()
      client.end(true)
      const wrapped: ConnectError = new Error(`device ${username} could not connect to ${url}: ${err.message}`, { cause: err })
      wrapped.code = err.code
      reject(wrapped)
    }
    // A broker may also just drop the socket instead of answering CONNACK.
    const onClose = (): void => {
      cleanup()
      client.end(true)
      reject(new Error(`device ${username}: connection to ${url} closed before CONNACK`))
    }
    const cleanup = (): void => {
      client.off('connect', onConnect)
      client.off('error', onError)
      client.off('close', onClose)
    }
    client.on('connect', onConnect)
    client.on('error', onError)
    client.on('close', onClose)
  })
}

/** 24 hex chars shaped like a BSON ObjectId: 4 bytes of UNIX seconds, then 8 random bytes. */
export function newMessageId(): string {
  const time = Buffer.alloc(4)
  time.writeUInt32BE(Math.floor(Date.now() / 1000) >>> 0)
  return time.toString('hex') + randomBytes(8).toString('hex')
}

/** Publish with QoS 1; resolves on PUBACK. */
export async function publishQos1(client: MqttClient, topic: string, payload: string | Buffer): Promise<void> {
  await client.publishAsync(topic, payload, { qos: 1 })
}

/** The CONNACK return code of a refused connection; throws if the device is let in. */
export async function refusedWith(url: string, login: DeviceLogin): Promise<number | string | undefined> {
  try {
    const client = await connectDevice(url, login)
    await client.endAsync(true)
  } catch (err) {
    return (err as ConnectError).code
  }
  throw new Error(`${login.productId}/${login.deviceId} connected, but should have been refused`)
}

/** A message a test device received, kept raw. */
export interface ReceivedMessage {
  topic: string
  /** The topic split at '/'. */
  levels: string[]
  payload: Buffer
  qos: number
  at: number
}
