// Browser tests run against the real `signet serve` binary on a fresh SQLite data
// directory, in Debian's Chromium (Playwright's own browser download is not used).
import { defineConfig } from '@playwright/test';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const bin = process.env.E2E_SIGNET_BIN;
if (!bin) {
  throw new Error('E2E_SIGNET_BIN must name the signet binary (the README test command sets it)');
}
const port = process.env.E2E_PORT ?? '3917';
const baseURL = `http://127.0.0.1:${port}`;
// The config is evaluated in the runner and again in each worker; workers inherit the
// runner's environment, so they all find the same data directory (tests read the first
// start's output there and run the CLI against it).
process.env.E2E_DATA_DIR ??= mkdtempSync(join(tmpdir(), 'signet-e2e-'));
const dataDir = process.env.E2E_DATA_DIR;
process.env.E2E_BASE_URL = baseURL;

export default defineConfig({
  testDir: './tests',
  timeout: 30_000,
  expect: { timeout: 10_000 },
  fullyParallel: false,
  workers: 1,
  forbidOnly: !!process.env.CI,
  retries: 0,
  reporter: [['list']],
  outputDir: 'test-results',
  use: {
    baseURL,
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--headless',
        '--disable-gpu',
        '--disable-quic',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    },
  },
  projects: [
    // Signs in with the first start's one-time password, chooses the admin's password and
    // creates a viewer; every other test depends on it.
    { name: 'setup', testMatch: /first-start\.setup\.ts/, use: { browserName: 'chromium' } },
    { name: 'chromium', dependencies: ['setup'], use: { browserName: 'chromium' } },
  ],
  webServer: {
    // stdout (the URL and the first admin's one-time password) goes to a file the setup
    // reads; logs (stderr) still reach the reporter.
    command: `"${bin}" serve > "${dataDir}/server.out"`,
    url: `${baseURL}/health/ready`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: 'pipe',
    stderr: 'pipe',
    env: {
      SIGNET_LISTEN: `127.0.0.1:${port}`,
      SIGNET_DATA_DIR: dataDir,
      SIGNET_LOG: 'info',
    },
  },
});
