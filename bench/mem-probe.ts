// TEMP measurement driver (mem16), not committed.
import { readFileSync } from 'node:fs'
import { DIRECT_ENV, GATEWAY_ENV, Mosquitto, sleep, startGateway } from './harness.js'
import { freePort } from '../test/helpers/ports.js'

const way = process.argv[2] ?? 'direct'
const idleMs = Number(process.env.IDLE_MS ?? 30000)
const cloudPort = await freePort()
const cloud = new Mosquitto(cloudPort, ['max_inflight_messages 0'])
await cloud.start()
const env = way === 'npm' ? GATEWAY_ENV : DIRECT_ENV
const sut = await startGateway(`mqtt://127.0.0.1:${cloudPort}`, Number(process.env.DEVICES ?? 100), [], true, undefined, 0, env)
const probe = async (label: string) => {
  await sleep(idleMs)
  const pid = sut.pid()!
  const rss = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
  const pick = (k: string) => Math.round(Number(new RegExp(`${k}:\\s+(\\d+)`).exec(rollup)![1]) / 1024)
  const threads = /Threads:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]
  console.log(`${way} ${label}: RSS ${(Number(rss) / 1024).toFixed(1)} MB anon ${pick('Anonymous')} file ${pick('Rss') - pick('Anonymous')} threads ${threads}`)
  if (process.env.SMAPS) {
    const { execFileSync } = await import('node:child_process')
    execFileSync('cp', [`/proc/${pid}/smaps`, `/tmp/mem16/smaps-${way}-${label}.txt`])
  }
  if (process.env.PROBE) {
    process.kill(pid, 'SIGWINCH')
    await sleep(3000)
  }
}
await probe('first')
if (!process.env.NORESTART) {
  await sut.restart()
  await probe('restart')
}
await sut.close()
await cloud.stop()
process.exit(0)
