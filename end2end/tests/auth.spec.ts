import { test as plain } from '@playwright/test';
import { test, expect, hydrated, signIn, ADMIN } from './fixtures';

test('anonymous visitors are sent to /login, and back where they were going after signing in', async ({ page }) => {
  await page.goto('/events');
  await expect(page).toHaveURL(/\/login\?next=%2Fevents$/);
  await expect(page.getByRole('heading', { level: 1, name: 'Sign in' })).toBeVisible();
  await hydrated(page, '#login-form button[type=submit]');
  await page.getByLabel('Email').fill(ADMIN.email);
  await page.getByLabel('Password').fill(ADMIN.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(/\/events$/);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Events');
});

test.describe('refused sign-in', () => {
  test.use({ expectedConsoleErrors: [/status of 401/] });

test('a wrong password is refused with a message that does not say which part was wrong', async ({ page }) => {
  await page.goto('/login');
  await hydrated(page, '#login-form button[type=submit]');
  await page.getByLabel('Email').fill(ADMIN.email);
  await page.getByLabel('Password').fill('not the password at all');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByRole('alert')).toHaveText('Sign-in failed: the email or password is wrong.');
  await expect(page).toHaveURL(/\/login$/);

  await page.getByLabel('Email').fill('nobody@e2e.test');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByRole('alert')).toHaveText('Sign-in failed: the email or password is wrong.');
  // Still signed out.
  await page.goto('/settings');
  await expect(page).toHaveURL(/\/login\?next=%2Fsettings$/);
});
});

test('signing in opens every page; signing out closes them', async ({ page }) => {
  await signIn(page, ADMIN);
  const nav = page.getByRole('navigation', { name: 'Main' });
  for (const [link, heading] of [
    ['Schedule', 'Config → Schedule'],
    ['Events', 'Events'],
    ['Settings', 'Settings'],
    ['JWKS', 'Config → JWKS'],
  ]) {
    await nav.getByRole('link', { name: link }).click();
    await expect(page.getByRole('heading', { level: 1 })).toHaveText(heading);
  }
  await page.getByRole('link', { name: 'Signet' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Overview');

  await hydrated(page, '#sign-out');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page).toHaveURL(/\/login$/);
  await page.goto('/config/jwks');
  await expect(page).toHaveURL(/\/login\?next=%2Fconfig%2Fjwks$/);
});

test('the login page loads its wasm and hydrates without console errors', async ({ page }) => {
  await page.goto('/login');
  await expect(page.getByRole('heading', { level: 1, name: 'Sign in' })).toBeVisible();
  await page.waitForLoadState('networkidle');
  const wasm = await page.evaluate(() =>
    performance.getEntriesByType('resource').some((e) => e.name.endsWith('.wasm')),
  );
  expect(wasm, 'the page loaded its wasm bundle').toBe(true);
  await hydrated(page, '#login-form button[type=submit]');
});

// The browser logs every 404 document load as a console error, so this test uses the
// plain page rather than the console-checking fixture.
plain('an unknown address answers 404 with a page', async ({ page }) => {
  const response = await page.goto('/no/such/page');
  expect(response?.status()).toBe(404);
  await expect(page.getByRole('heading', { level: 1, name: 'Not found' })).toBeVisible();
});
