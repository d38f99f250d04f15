import { test, expect, hydrated, signIn, ADMIN } from './fixtures';

test.beforeEach(async ({ page }) => {
  await signIn(page, ADMIN, '/config/schedule');
  await hydrated(page, '#preview-button');
});

test('preview: the hydrated button asks the server for the next five fire times', async ({ page }) => {
  await page.getByLabel(/Cron expression/).fill('0 0 12 * * Mon *');
  await page.getByRole('button', { name: 'Preview' }).click();
  const items = page.locator('#preview-result li');
  await expect(items).toHaveCount(5);
  for (const text of await items.allTextContents()) {
    expect(text).toMatch(/^\d{4}-\d{2}-\d{2} 12:00:00 UTC$/);
  }
});

test('an invalid edit is explained in the browser and cannot be saved', async ({ page }) => {
  const cron = page.getByLabel(/Cron expression/);
  await cron.fill('30 3 1 * *');
  await expect(page.locator('#cron-hint')).toContainText('expected 7 fields');
  await expect(page.getByRole('button', { name: 'Save schedule' })).toBeDisabled();

  await cron.fill('0 0 0 30 2 * *');
  await page.getByRole('button', { name: 'Preview' }).click();
  await expect(page.locator('#preview-result [role=alert]')).toHaveText(/never fires/);

  await cron.fill('0 30 3 1 * * *');
  await page.getByLabel(/Retention/).fill('30m');
  await expect(page.locator('#cron-hint')).toContainText('must be longer than the maximum token lifetime');
  await expect(page.getByRole('button', { name: 'Save schedule' })).toBeDisabled();
  await expect(page.locator('#current-cron')).toHaveText('0 30 3 1 * * *');
});

test('a valid edit is saved, shown, and recorded', async ({ page }) => {
  await page.getByLabel(/Cron expression/).fill('0 15 2 * * Sun *');
  await page.getByLabel(/Retention/).fill('45d');
  await page.getByRole('button', { name: 'Save schedule' }).click();
  await expect(page.locator('#save-result')).toHaveText('Schedule saved.');
  await expect(page.locator('#current-cron')).toHaveText('0 15 2 * * Sun *');
  await expect(page.locator('#current-retention')).toHaveText('45d');
  const next = page.locator('#current-next li');
  await expect(next).toHaveCount(5);
  for (const text of await next.allTextContents()) {
    expect(text).toMatch(/ 02:15:00 UTC$/);
  }
  await page.goto('/events');
  await expect(page.locator('tr[data-kind="schedule.changed"]').first()).toContainText(ADMIN.email);
});

test('a schedule saved here drives the running scheduler at once', async ({ page }) => {
  await expect(page.locator('#last-scheduled')).toHaveText('none yet');
  const cron = page.getByLabel(/Cron expression/);
  await cron.fill('*/2 * * * * * *');
  await page.getByRole('button', { name: 'Save schedule' }).click();
  await expect(page.locator('#save-result')).toHaveText('Schedule saved.');

  // No restart: within a few seconds the scheduler has rotated for a slot of the new
  // expression, and the page names the slot and the instance.
  await expect(async () => {
    await page.reload();
    await expect(page.locator('#last-scheduled')).toHaveText(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC \(by .+\)$/, { timeout: 500 });
  }).toPass({ timeout: 10_000 });
  const slot = (await page.locator('#last-scheduled').textContent()) ?? '';
  expect(Number(slot.slice(17, 19)) % 2).toBe(0);

  await page.goto('/events');
  await expect(page.locator('tr[data-kind="keys.rotated"]').first()).toContainText('scheduler');

  // Back to a monthly schedule, so the other tests see steady keys.
  await page.goto('/config/schedule');
  await hydrated(page, '#preview-button');
  await page.getByLabel(/Cron expression/).fill('0 30 3 1 * * *');
  await page.getByRole('button', { name: 'Save schedule' }).click();
  await expect(page.locator('#current-cron')).toHaveText('0 30 3 1 * * *');
});
