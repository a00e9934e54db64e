-- The service's schema. Applied by the service at start, under an advisory lock, once per
-- version (see service/migrate.c); every statement is idempotent so a half-applied run can be
-- repeated.
CREATE TABLE IF NOT EXISTS users (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS settings (
    user_id       bigint PRIMARY KEY REFERENCES users (id),
    theme         text NOT NULL,
    locale        text NOT NULL,
    notifications boolean NOT NULL
);

-- One account per user (same id). Balances never go negative: an overdraft is a 409, and the
-- CHECK is the last line of defence.
CREATE TABLE IF NOT EXISTS accounts (
    id       bigint PRIMARY KEY,
    user_id  bigint NOT NULL REFERENCES users (id),
    balance  bigint NOT NULL CHECK (balance >= 0)
);

-- A transfer and its two ledger legs (-amount on `from`, +amount on `to`). A transfer without
-- both legs is a partial transfer: what the `before` route leaves behind when it is cancelled.
CREATE TABLE IF NOT EXISTS transfers (
    id            bigserial PRIMARY KEY,
    from_account  bigint NOT NULL REFERENCES accounts (id),
    to_account    bigint NOT NULL REFERENCES accounts (id),
    amount        bigint NOT NULL CHECK (amount > 0),
    variant       text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS transfers_from_idx ON transfers (from_account, id);
CREATE INDEX IF NOT EXISTS transfers_to_idx ON transfers (to_account, id);

CREATE TABLE IF NOT EXISTS ledger (
    id           bigserial PRIMARY KEY,
    transfer_id  bigint NOT NULL REFERENCES transfers (id),
    account_id   bigint NOT NULL REFERENCES accounts (id),
    delta        bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_transfer_idx ON ledger (transfer_id);

-- Idempotency keys are claimed in the same transaction as the transfer they protect, and keep
-- the response that was sent, so a retry gets the same answer without moving money again.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key              text PRIMARY KEY,
    request_hash     text NOT NULL,
    response_status  int NOT NULL,
    response_body    text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS batch_results (
    id         bigserial PRIMARY KEY,
    batch_id   text NOT NULL,
    user_id    bigint NOT NULL REFERENCES users (id),
    variant    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS batch_results_batch_idx ON batch_results (batch_id);

CREATE TABLE IF NOT EXISTS audit_events (
    id         bigserial PRIMARY KEY,
    task_id    text NOT NULL,
    user_id    bigint NOT NULL REFERENCES users (id),
    seq        int NOT NULL,
    variant    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_events_task_idx ON audit_events (task_id);
