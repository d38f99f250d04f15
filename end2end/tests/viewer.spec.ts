import { test, expect, hydrated, signIn, VIEWER } from './fixtures';

test('a viewer sees every page, every control is disabled, and the server refuses changes', async ({ page, request }) => {
  await signIn(page, VIEWER);
  await expect(page.locator('.account .role')).toHaveText('viewer');

  // Config → JWKS: the keys are there, the buttons are not usable.
  await expect(page.locator('tr[data-state="active"]').first()).toBeVisible();
  await expect(page.locator('#viewer-note')).toBeVisible();
  await expect(page.getByRole('button', { name: 'Rotate Keys' })).toBeDisabled();
  await expect(page.getByRole('button', { name: 'Rotate and revoke' })).toBeDisabled();
  for (const button of await page.locator('button.revoke').all()) await expect(button).toBeDisabled();

  await page.goto('/config/schedule');
  await hydrated(page, '#preview-button'); // looking is allowed
  await expect(page.getByRole('button', { name: 'Save schedule' })).toBeDisabled();

  await page.goto('/settings');
  await expect(page.locator('#admins tr[data-email]').first()).toBeVisible();
  await expect(page.locator('#create-admin-button')).toBeDisabled();
  await expect(page.locator('#create-token-button')).toBeDisabled();

  await page.goto('/events');
  await hydrated(page, '#apply-filters');
  await expect(page.locator('#first-rows tr').first()).toBeVisible();

  // The server refuses the same changes when called directly with the viewer's session.
  const origin = process.env.E2E_BASE_URL!;
  for (const [fn, form] of [
    ['rotate_keys', { alg: '' }],
    ['rotate_and_revoke', { alg: '', reason: 'x' }],
    ['save_schedule', { expression: '0 0 4 * * * *', retention: '40d' }],
    ['create_admin', { email: 'sneaky@e2e.test', role: 'admin' }],
    ['create_token', { name: 'sneaky', 'scopes[0]': 'sign' }],
  ] as const) {
    const res = await page.request.post(`/ui/${fn}`, { form, headers: { origin } });
    expect(res.status(), fn).toBe(403);
    expect(await res.text()).toContain('viewer');
  }
  // And anonymous callers get 401.
  const anonymous = await request.post('/ui/rotate_keys', { form: { alg: '' }, headers: { origin } });
  expect(anonymous.status()).toBe(401);
});
