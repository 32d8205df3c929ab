// The machine the gateway runs on, for the overview page and the diagnostics bundle: CPU, memory,
// the data folder's disk, uptime and versions. CPU use is measured between two reads (the
// previous request, or the app's start), from the kernel's counters (os.cpus, process.cpuUsage).
import { statfs } from 'node:fs/promises'
import os from 'node:os'
import type { SystemInfo } from './api-types.js'

export type { SystemInfo } from './api-types.js'

interface CpuSample {
  busy: number
  total: number
  proc: number
  at: bigint
}

function sample(): CpuSample {
  let busy = 0
  let total = 0
  for (const c of os.cpus()) {
    const t = c.times.user + c.times.nice + c.times.sys + c.times.irq + c.times.idle
    total += t
    busy += t - c.times.idle
  }
  const u = process.cpuUsage()
  return { busy, total, proc: u.user + u.system, at: process.hrtime.bigint() }
}

const percent = (part: number, whole: number): number => (whole > 0 ? Math.round((1000 * part) / whole) / 10 : 0)

/** Reads the system; each call measures CPU use since the one before. */
export function systemReader(version: string, dataDir: string): () => Promise<SystemInfo> {
  let last = sample()
  return async () => {
    const now = sample()
    const wallUs = Number(now.at - last.at) / 1000
    const cpu = { busy: now.busy - last.busy, total: now.total - last.total, proc: now.proc - last.proc }
    last = now
    let disk: SystemInfo['disk'] = { path: dataDir, totalBytes: null, freeBytes: null }
    try {
      const s = await statfs(dataDir)
      // bavail: what the gateway's user may still write (root's reserve left out).
      disk = { path: dataDir, totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize }
    } catch {
      // a data folder that is gone shows as unknown; health says why
    }
    const m = process.memoryUsage()
    return {
      version,
      node: process.version,
      uptimeSeconds: Math.round(process.uptime()),
      hostUptimeSeconds: Math.round(os.uptime()),
      cpu: { cores: os.availableParallelism(), load1: os.loadavg()[0], usagePercent: percent(cpu.busy, cpu.total), processPercent: percent(cpu.proc, wallUs) },
      memory: { rss: m.rss, heapUsed: m.heapUsed, systemTotal: os.totalmem(), systemFree: os.freemem() },
      disk,
      platform: process.platform,
      arch: process.arch,
    }
  }
}
