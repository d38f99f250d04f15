// The first start: Signet created admin@localhost and printed its one-time password once.
// Sign in with it, get sent to choose a password, choose one; then create a viewer with
// the CLI. Every other test signs in with these accounts.
import { test, expect, hydrated, serverOutput, signet, ADMIN, VIEWER } from './fixtures';

test('the first admin signs in with the printed one-time password and must choose their own', async ({ page }) => {
  const out = serverOutput();
  expect(out).toContain(`created the admin account ${ADMIN.email}`);
  const otp = /One-time password: (\S+)/.exec(out)?.[1];
  expect(otp, 'serve printed the one-time password').toBeTruthy();

  await page.goto('/config/jwks');
  await expect(page).toHaveURL(/\/login\?next=%2Fconfig%2Fjwks$/);
  await hydrated(page, '#login-form button[type=submit]');
  await page.getByLabel('Email').fill(ADMIN.email);
  await page.getByLabel('Password').fill(otp!);
  await page.getByRole('button', { name: 'Sign in' }).click();

  // A one-time password leads to the password page, and nowhere else.
  await expect(page).toHaveURL(/\/account\/password$/);
  await expect(page.getByRole('status')).toContainText('one-time password');
  await page.goto('/events');
  await expect(page).toHaveURL(/\/account\/password$/);

  await hydrated(page, '#current-password');
  await page.getByLabel('Current password').fill(otp!);
  await page.getByLabel(/^New password \(/).fill('too short');
  await expect(page.locator('#password-hint')).toHaveText(/at least 12 characters/);
  await page.getByLabel(/^New password \(/).fill(ADMIN.password);
  await page.getByLabel('New password again').fill(ADMIN.password);
  await page.getByRole('button', { name: 'Save password' }).click();
  await expect(page).toHaveURL(/\/config\/jwks$/);
  await expect(page.locator('#me-email')).toHaveText(ADMIN.email);

  signet(['admin', 'create', VIEWER.email, '--role', 'viewer', '--password-stdin'], `${VIEWER.password}\n`);
});
