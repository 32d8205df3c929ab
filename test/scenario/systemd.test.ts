// Running under systemd: the gateway reports READY=1 once it serves, WATCHDOG=1 while its event loop
// turns, STOPPING=1 on SIGTERM, through the real systemd-notify tool to a NOTIFY_SOCKET that this
// test listens on (a unix datagram socket, opened with Debian's python3 since Node has none); and
// the shipped unit file passes systemd-analyze.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { GatewayProcess, repoRoot } from '../helpers/gateway-process.js'

const execFileAsync = promisify(execFile)

describe('systemd integration', () => {
  let dir: string
  let listener: ChildProcess
  const received: string[] = []

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'notify-'))
    const sock = path.join(dir, 'notify.sock')
    // Print every datagram on its own line, messages joined with '|'.
    const py = `import socket,sys\ns=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.bind(${JSON.stringify(sock)})\nprint('bound', flush=True)\nwhile True:\n  print(s.recv(4096).decode().replace('\\n','|'), flush=True)\n`
    listener = spawn('/usr/bin/python3', ['-c', py], { stdio: ['ignore', 'pipe', 'inherit'] })
    await new Promise<void>((resolve) => {
      listener.stdout!.on('data', (d: Buffer) => {
        for (const line of d.toString().split('\n').filter(Boolean)) {
          if (line === 'bound') resolve()
          else received.push(line)
        }
      })
    })
  })

  afterAll(() => {
    listener?.kill()
    rmSync(dir, { recursive: true, force: true })
  })

  it('reports READY, keeps the watchdog fed while running, and reports STOPPING on SIGTERM', async () => {
    const gw = new GatewayProcess({ log: { level: 'warn' } }, { env: { NOTIFY_SOCKET: path.join(dir, 'notify.sock'), WATCHDOG_USEC: '400000' } })
    try {
      await gw.start()
      await expect.poll(() => received.some((m) => m.split('|').includes('READY=1')), { timeout: 10_000 }).toBe(true)
      // Half the watchdog interval: a WATCHDOG=1 every 200 ms.
      await expect.poll(() => received.filter((m) => m.split('|').includes('WATCHDOG=1')).length, { timeout: 10_000 }).toBeGreaterThanOrEqual(3)
      expect(received.find((m) => m.split('|').includes('READY=1'))).toContain(`MAINPID=${gw.pid}`)
      expect(await gw.stop()).toBe(0)
      await expect.poll(() => received.some((m) => m.split('|').includes('STOPPING=1')), { timeout: 10_000 }).toBe(true)
    } finally {
      await gw.close()
    }
  })

  it('says nothing when not started by systemd', async () => {
    const before = received.length
    const gw = new GatewayProcess({ log: { level: 'warn' } })
    try {
      await gw.start()
      await new Promise((r) => setTimeout(r, 500))
      expect(received.length).toBe(before)
    } finally {
      await gw.close()
    }
  })

  it('ships a unit whose "no retry on a bad config" applies: the check is the start itself, exit 78 is not restarted', () => {
    const unit = readFileSync(path.join(repoRoot, 'systemd', 'iothub-edge.service'), 'utf8')
    const directives = unit.split('\n').filter((l) => /^[A-Za-z]+=/.test(l))
    // RestartPreventExitStatus does not apply to ExecStartPre: a failing check there restarts for ever.
    expect(directives.filter((l) => l.startsWith('ExecStartPre='))).toEqual([])
    expect(directives).toContain('RestartPreventExitStatus=78')
    expect(directives.filter((l) => l.startsWith('ExecStart='))).toEqual([expect.stringMatching(/ start -c \/etc\/iothub-edge\/gateway\.yaml$/)])
  })

  it('ships a unit and a package that let the serial adapter open its ports (the real /dev, the dialout group)', () => {
    const unit = readFileSync(path.join(repoRoot, 'systemd', 'iothub-edge.service'), 'utf8')
    const directives = unit.split('\n').filter((l) => /^[A-Za-z]+=/.test(l))
    // PrivateDevices=yes would hide /dev/ttyUSB0 and /dev/serial/by-id/... from the gateway.
    expect(directives.filter((l) => /^(PrivateDevices|DevicePolicy)=/.test(l))).toEqual([])
    const postinst = readFileSync(path.join(repoRoot, 'packaging', 'deb', 'postinst'), 'utf8')
    expect(postinst).toMatch(/usermod -a -G dialout "\$USER_NAME"/)
  })

  it('ships a unit file that systemd-analyze accepts', async () => {
    // It exits 1 when /usr/bin/iothub-edge is not installed (test/package/deb-install.test.ts
    // verifies the unit where it is); complaints about paths that exist only on an installed box
    // are fine here, nothing else is.
    const stderr = await execFileAsync('systemd-analyze', ['verify', path.join(repoRoot, 'systemd', 'iothub-edge.service')]).then(
      (r) => r.stderr,
      (err: Error & { stderr?: string }) => err.stderr ?? err.message,
    )
    expect(stderr.split('\n').filter((l) => l && !/Command \/usr\/bin\/iothub-edge is not executable: No such file/.test(l))).toEqual([])
  })
})
