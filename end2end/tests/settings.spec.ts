import { test, expect, hydrated, signIn, ADMIN } from './fixtures';

test.beforeEach(async ({ page }) => {
  await signIn(page, ADMIN, '/settings');
  // Enabled once hydrated, for an admin (the token button also waits for a name and scope).
  await hydrated(page, '#create-admin-button');
});

test('an API token is created with scopes, shown once, works, and can be revoked', async ({ page, request }) => {
  const name = `e2e-settings-${Date.now()}`;
  await page.getByLabel(/^Name/).fill(name);
  await page.getByLabel(/keys:read/).check();
  await page.getByRole('button', { name: 'Create token' }).click();
  const secret = (await page.locator('.secret-value').textContent())!;
  expect(secret).toMatch(/^sgt_/);
  const row = page.locator(`tr[data-token="${name}"]`);
  await expect(row).toContainText('keys:read');

  const keys = await request.get('/api/v1/keys', { headers: { authorization: `Bearer ${secret}` } });
  expect(keys.status()).toBe(200);

  // Revoking asks first; cancelling changes nothing.
  await row.getByRole('button', { name: `Revoke token ${name}` }).click();
  await row.getByRole('button', { name: 'Cancel' }).click();
  await expect(row.locator('.status')).toHaveText('active');
  await row.getByRole('button', { name: `Revoke token ${name}` }).click();
  await row.getByRole('button', { name: `Confirm: Revoke token ${name}` }).click();
  await expect(row.locator('.status')).toHaveText(/^revoked /);
  const after = await request.get('/api/v1/keys', { headers: { authorization: `Bearer ${secret}` } });
  expect(after.status()).toBe(401);
});

test('an admin is created with a one-time password and can be disabled', async ({ page }) => {
  const email = `new-${Date.now()}@e2e.test`;
  await page.getByLabel('Email', { exact: true }).fill('not an email');
  await expect(page.locator('#new-admin-hint')).toContainText('is not an email address');
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Role').selectOption('viewer');
  await page.getByRole('button', { name: 'Create admin' }).click();
  await expect(page.locator('.secret')).toContainText(email);
  const row = page.locator(`tr[data-email="${email}"]`);
  await expect(row.locator('.status')).toHaveText('one-time password');

  await row.getByRole('button', { name: `Disable ${email}` }).click();
  await row.getByRole('button', { name: `Confirm: Disable ${email}` }).click();
  await expect(row.locator('.status')).toHaveText('disabled');
  await row.getByRole('button', { name: `Enable ${email}` }).click();
  await expect(row.locator('.status')).toHaveText('one-time password');
});
