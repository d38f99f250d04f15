-- A generated one-time password stops working 24 hours after it was issued. Accounts
-- that still hold one from before this migration get 24 hours from the upgrade; chosen
-- passwords never expire (NULL).
ALTER TABLE admins ADD COLUMN password_expires_at TEXT;
UPDATE admins SET password_expires_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '+1 day')
WHERE must_change_password;
