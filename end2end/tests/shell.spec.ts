import { test as plain } from '@playwright/test';
import { test, expect, hydrated } from './fixtures';

test('every page renders in the shell with working navigation', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByRole('heading', { level: 1, name: 'Overview' })).toBeVisible();
  await expect(page).toHaveTitle('Overview · Signet');

  const nav = page.getByRole('navigation', { name: 'Main' });
  await nav.getByRole('link', { name: 'JWKS' }).click();
  await expect(page).toHaveURL(/\/config\/jwks$/);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Config → JWKS');

  await nav.getByRole('link', { name: 'Schedule' }).click();
  await expect(page).toHaveURL(/\/config\/schedule$/);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Config → Schedule');

  await nav.getByRole('link', { name: 'Events' }).click();
  await expect(page).toHaveURL(/\/events$/);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Events');

  await page.getByRole('link', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(/\/login$/);
});

test('the login page loads and hydrates without console errors', async ({ page }) => {
  await page.goto('/login');
  await expect(page.getByRole('heading', { level: 1, name: 'Sign in' })).toBeVisible();
  await expect(page.getByLabel('Email')).toBeVisible();
  await expect(page.getByLabel('Password')).toBeVisible();
  // Let the wasm load and hydrate; the fixture then fails the test on any console error.
  await page.waitForLoadState('networkidle');
  const wasm = await page.evaluate(() =>
    performance.getEntriesByType('resource').some((e) => e.name.endsWith('.wasm')),
  );
  expect(wasm, 'the page loaded its wasm bundle').toBe(true);
});

test('schedule preview: the hydrated button calls the server and shows its answer', async ({ page }) => {
  await page.goto('/config/schedule');
  await expect(page.locator('#current-cron')).toHaveText('0 30 3 1 * * *');
  await hydrated(page, '#preview-button');

  const input = page.getByLabel(/Cron expression/);
  await input.fill('0 0 12 * * Mon *');
  await page.getByRole('button', { name: 'Preview' }).click();

  const items = page.locator('#preview-result li');
  await expect(items).toHaveCount(5);
  for (const text of await items.allTextContents()) {
    expect(text).toMatch(/^\d{4}-\d{2}-\d{2} 12:00:00 UTC$/);
  }
});

test('schedule preview: a bad expression is explained in the browser and by the server', async ({ page }) => {
  await page.goto('/config/schedule');
  await hydrated(page, '#preview-button');

  const input = page.getByLabel(/Cron expression/);
  await input.fill('30 3 1 * *');
  // The browser runs the same parser as the server, before any request.
  await expect(page.locator('#cron-hint')).toHaveText(/expected 7 fields/);

  await input.fill('0 0 0 30 2 * *');
  await page.getByRole('button', { name: 'Preview' }).click();
  await expect(page.locator('#preview-result [role=alert]')).toHaveText(/never fires/);
});

// The browser logs every 404 document load as a console error, so this test uses the
// plain page rather than the console-checking fixture.
plain('an unknown address answers 404 with a page', async ({ page }) => {
  const response = await page.goto('/no/such/page');
  expect(response?.status()).toBe(404);
  await expect(page.getByRole('heading', { level: 1, name: 'Not found' })).toBeVisible();
});
