// A device's side of OTA (PROTOCOL.md "OTA", docs/operators/ota.md), as firmware does it: take the
// `$ota_upgrade` command, fetch the image from the URL it names (the gateway's local URL), check
// size and md5, report progress with `update_ota_status`, and the new version with `update_status`.
import { createHash } from 'node:crypto'
import type { CommandDevice } from './command-device.js'
import { newMessageId } from './device.js'

export interface OtaOffer {
  url: string
  version: string
  size: number
  md5: string
  type: string
}

/** Waits for the `$ota_upgrade` of job `requestId`, downloads the image it offers and checks it. */
export async function takeOtaUpgrade(dev: CommandDevice, requestId: string, timeoutMs = 20_000): Promise<{ offer: OtaOffer; image: Buffer }> {
  const cmd = await dev.waitFor((m) => m.levels[0] === 'cmd' && m.levels[3] === '$ota_upgrade' && m.levels[5] === requestId, timeoutMs, `$ota_upgrade of job ${requestId}`)
  const offer = JSON.parse(cmd.payload.toString()) as OtaOffer
  const res = await fetch(offer.url, { signal: AbortSignal.timeout(timeoutMs) })
  if (!res.ok) throw new Error(`${dev.productId}/${dev.deviceId}: GET ${offer.url} answered ${res.status}`)
  const image = Buffer.from(await res.arrayBuffer())
  const md5 = createHash('md5').update(image).digest('hex')
  if (image.length !== offer.size || md5 !== offer.md5) throw new Error(`${dev.productId}/${dev.deviceId}: the image is ${image.length} bytes, md5 ${md5}; the command says ${offer.size}, ${offer.md5}`)
  return { offer, image }
}

/** `update_ota_status`: progress 1..100, or a failure code (-1 download, -2 checksum, -3 install, -4 other). */
export async function reportOtaProgress(dev: CommandDevice, offer: OtaOffer, progress: number, desc = ''): Promise<void> {
  await dev.publish(`update_ota_status/${dev.productId}/${dev.deviceId}/${newMessageId()}`, JSON.stringify({ type: offer.type, version: offer.version, progress, desc }))
}

/** `update_status` with the version now running (after the install and restart). */
export async function reportVersion(dev: CommandDevice, version: string): Promise<void> {
  await dev.publish(`update_status/${dev.productId}/${dev.deviceId}/${newMessageId()}`, JSON.stringify({ version }))
}
