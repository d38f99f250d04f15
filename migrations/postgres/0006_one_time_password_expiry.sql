-- A generated one-time password stops working 24 hours after it was issued. Accounts
-- that still hold one from before this migration get 24 hours from the upgrade; chosen
-- passwords never expire (NULL).
ALTER TABLE admins ADD COLUMN password_expires_at TIMESTAMPTZ;
UPDATE admins SET password_expires_at = now() + INTERVAL '24 hours'
WHERE must_change_password;
