-- The dashboard finds a user's transfers through the user's accounts; without this index that
-- lookup scans every account.
CREATE INDEX IF NOT EXISTS accounts_user_idx ON accounts (user_id);
