// The serial tests' real peers: socat pseudo-terminal pairs stand in for the cable (one end for the
// gateway, one for the device), Debian's pymodbus RTU server plays a Modbus slave, and a plain
// writer plays a line-protocol sensor. Removing a pair's links and making them again is an
// unplug and replug of a USB-serial adapter.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { SerialPort } from 'serialport'
import { isRunning, trackChild, waitForExit } from './child-processes.js'

// Debian's interpreter: the python3 first on PATH is a separate one without Debian's pymodbus.
const DEBIAN_PYTHON = process.env.DEBIAN_PYTHON ?? '/usr/bin/python3'
const SLAVE_SCRIPT = fileURLToPath(new URL('./modbus_slave.py', import.meta.url))

/** Wait until `check` gives a value (not undefined or false); fails naming `what` (told when it fails) after `timeoutMs`. */
export async function until<T>(check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, what: string | (() => string)): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await check()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`${typeof what === 'string' ? what : what()} (waited ${timeoutMs} ms)`)
    await sleep(20)
  }
}

async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || !isRunning(child)) return
  child.kill('SIGTERM')
  try {
    await waitForExit(child, 3_000)
  } catch {
    child.kill('SIGKILL')
    await waitForExit(child, 3_000)
  }
}

/** A temp dir for links and specs; `dispose()` removes it. */
export async function serialTempDir(prefix: string): Promise<{ dir: string; dispose: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix))
  return { dir, dispose: () => rm(dir, { recursive: true, force: true }) }
}

/** Two linked pseudo-terminals: `gateway` and `device` are the paths of the two ends. */
export class PtyPair {
  private proc?: ChildProcess

  constructor(
    readonly gateway: string,
    readonly device: string,
  ) {}

  /** Plug the cable in: both links exist once this resolves. */
  async start(): Promise<void> {
    const proc = spawn('socat', ['-d', '-d', `pty,raw,echo=0,link=${this.gateway}`, `pty,raw,echo=0,link=${this.device}`], { stdio: ['ignore', 'ignore', 'pipe'] })
    trackChild(proc)
    proc.stderr!.resume()
    this.proc = proc
    await until(() => existsSync(this.gateway) && existsSync(this.device), 5_000, `socat did not create ${this.gateway} and ${this.device}`)
  }

  /** Pull the cable: socat exits, the ptys close and their links are removed. */
  async stop(): Promise<void> {
    await stopChild(this.proc)
    this.proc = undefined
    // Both links: a new socat started while the old device link is still there fails on it, and
    // removes the gateway link it had just made when it exits (the port would never come back).
    await until(() => !existsSync(this.gateway) && !existsSync(this.device), 5_000, `${this.gateway} or ${this.device} is still there`)
  }
}

export interface SlaveWrite {
  write: 'hr' | 'co' | 'ir' | 'di'
  unit: number
  address: number
  values: number[]
}

export interface SlaveSpec {
  baudrate?: number
  /** unitId -> table -> address -> value (16-bit words; 0/1 for bits). */
  units: Record<number, Partial<Record<'hr' | 'ir' | 'co' | 'di', Record<number, number>>>>
}

/** Debian's pymodbus serial server on one end of a pty pair. */
export class ModbusSlave {
  readonly writes: SlaveWrite[] = []
  private proc?: ChildProcess
  private stderr = ''

  constructor(
    private readonly portPath: string,
    private readonly specFile: string,
    private readonly spec: SlaveSpec,
  ) {}

  async start(): Promise<void> {
    await writeFile(this.specFile, JSON.stringify({ port: this.portPath, ...this.spec }))
    const proc = spawn(DEBIAN_PYTHON, [SLAVE_SCRIPT, this.specFile], { stdio: ['ignore', 'pipe', 'pipe'] })
    trackChild(proc)
    this.proc = proc
    let ready = false
    let out = ''
    proc.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8')
      let nl: number
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl).trim()
        out = out.slice(nl + 1)
        if (line === 'ready') ready = true
        else if (line.startsWith('{')) this.writes.push(JSON.parse(line) as SlaveWrite)
      }
    })
    proc.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString('utf8')))
    await until(() => ready || !isRunning(proc), 10_000, 'the modbus slave did not start')
    if (!ready) throw new Error(`the modbus slave exited: ${this.stderr}`)
  }

  /** Kill it (the slave dies; the cable stays). */
  async stop(): Promise<void> {
    await stopChild(this.proc)
    this.proc = undefined
  }
}

/** A line-protocol sensor: writes bytes to its end of the pty. */
export async function sensorWrite(devicePath: string, bytes: Buffer | string): Promise<void> {
  const { open } = await import('node:fs/promises')
  const fh = await open(devicePath, 'r+')
  try {
    await fh.write(typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes)
  } finally {
    await fh.close()
  }
}

/** The sensor's end of the cable, held open like a device that stays powered. */
export class Sensor {
  received = ''
  private constructor(private readonly port: SerialPort) {
    port.on('data', (chunk: Buffer) => (this.received += chunk.toString('utf8')))
  }

  static async open(devicePath: string): Promise<Sensor> {
    const port = new SerialPort({ path: devicePath, baudRate: 115200, autoOpen: false })
    await new Promise<void>((resolve, reject) => port.open((err) => (err ? reject(err) : resolve())))
    return new Sensor(port)
  }

  async send(bytes: string | Buffer): Promise<void> {
    await new Promise<void>((resolve, reject) => this.port.write(bytes, (err) => (err ? reject(err) : resolve())))
    await new Promise<void>((resolve, reject) => this.port.drain((err) => (err ? reject(err) : resolve())))
  }

  async close(): Promise<void> {
    if (this.port.isOpen) await new Promise<void>((resolve) => this.port.close(() => resolve()))
  }
}

export interface MonitorEvent {
  event: string
  data: { ts: number; dir: 'rx' | 'tx'; hex: string; text: string; count?: number }
}

/** The events of a port's live monitor (a fetch response with text/event-stream), as they come. */
export function watchMonitor(res: Response): { events: MonitorEvent[]; done: Promise<void> } {
  const events: MonitorEvent[] = []
  const reader = res.body!.getReader()
  const done = (async () => {
    let buf = ''
    for (;;) {
      const { value, done: end } = await reader.read()
      if (end) return
      buf += Buffer.from(value).toString('utf8')
      let at: number
      while ((at = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, at)
        buf = buf.slice(at + 2)
        const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message'
        const data = /^data: (.*)$/m.exec(block)?.[1]
        if (data !== undefined) events.push({ event, data: JSON.parse(data) as MonitorEvent['data'] })
      }
    }
  })().catch(() => undefined)
  return { events, done }
}
