// MessageIds the gateway mints itself (`$connection`, its own update_status): 24 hex characters in
// the shape of a BSON ObjectId like the hub and SDK use (PROTOCOL.md, "Identities").
import { randomBytes } from 'node:crypto'

const processUnique = randomBytes(5)
let counter = randomBytes(3).readUIntBE(0, 3)

export function newMessageId(now = Date.now()): string {
  const b = Buffer.alloc(12)
  b.writeUInt32BE(Math.floor(now / 1000), 0)
  processUnique.copy(b, 4)
  counter = (counter + 1) & 0xffffff
  b.writeUIntBE(counter, 9, 3)
  return b.toString('hex')
}
