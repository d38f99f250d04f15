// A `page` fixture that fails the test on any uncaught error or console error, and saves
// a full-page screenshot of where each test ended; and helpers for signing in.
import { test as base, expect, type Page } from '@playwright/test';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const test = base.extend<{ expectedConsoleErrors: RegExp[] }>({
  // Console errors a test provokes on purpose (Chromium logs every 4xx answer to a
  // fetch, such as a refused sign-in, as an error).
  expectedConsoleErrors: [[], { option: true }],
  page: async ({ page, expectedConsoleErrors }, use, testInfo) => {
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      if (expectedConsoleErrors.some((re) => re.test(msg.text()))) return;
      problems.push(`console.error: ${msg.text()}`);
    });
    await use(page);
    await page.screenshot({
      path: testInfo.outputPath('page.png'),
      fullPage: true,
    });
    expect(problems, 'browser console must stay clean').toEqual([]);
  },
});

export { expect };

/** The first admin (created by the first start) and the viewer the setup creates. */
export const ADMIN = { email: 'admin@localhost', password: 'e2e admin password 1' };
export const VIEWER = { email: 'viewer@e2e.test', password: 'e2e viewer password 1' };

export const dataDir = (): string => {
  const dir = process.env.E2E_DATA_DIR;
  if (!dir) throw new Error('E2E_DATA_DIR is set by playwright.config.ts');
  return dir;
};

/** What `signet serve` printed on stdout (its URL, and on the first start the admin). */
export const serverOutput = (): string => readFileSync(join(dataDir(), 'server.out'), 'utf8');

/** Runs the real `signet` CLI against the test server's data directory. */
export function signet(args: string[], input?: string): string {
  const bin = process.env.E2E_SIGNET_BIN;
  if (!bin) throw new Error('E2E_SIGNET_BIN must name the signet binary');
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, SIGNET_DATA_DIR: dataDir(), SIGNET_LOG: 'warn' };
  return execFileSync(bin, args, { env, input, encoding: 'utf8' });
}

/** Waits until the page has hydrated: the app enables this control only in the browser. */
export async function hydrated(page: Page, selector: string) {
  await expect(page.locator(selector)).toBeEnabled();
}

/** Signs in through the form and waits for the page it leads to. */
export async function signIn(page: Page, who: { email: string; password: string }, path = '/config/jwks') {
  await page.goto(`/login?next=${encodeURIComponent(path)}`);
  await hydrated(page, '#login-form button[type=submit]');
  await page.getByLabel('Email').fill(who.email);
  await page.getByLabel('Password').fill(who.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(new RegExp(`${path.replace(/[/]/g, '\\/')}$`));
  await expect(page.locator('#me-email')).toHaveText(who.email);
}
