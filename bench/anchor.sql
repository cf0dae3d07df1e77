-- The plain-PostgreSQL anchor of `make bench`: the same transfer the ledger posts,
-- done the simplest correct way. One call of transfer() is one transaction:
-- idempotency key, transfer row, two entries, two guarded balance updates.
-- No hash chain, no per-principal keys, no request hash: a floor to compare with.
--
-- psql -v ON_ERROR_STOP=1 -v accounts=10000 -v balance=1000000000000 -f anchor.sql

SET client_min_messages = warning;

\if :{?accounts}
\else
\set accounts 10000
\endif
\if :{?balance}
\else
\set balance 1000000000000
\endif

DROP FUNCTION IF EXISTS transfer(bigint, bigint, bigint, text);
DROP TABLE IF EXISTS entries, idempotency_keys, transfers, accounts;

CREATE TABLE accounts (
    id      bigint PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0)
);

CREATE TABLE transfers (
    id           bigserial PRIMARY KEY,
    from_account bigint NOT NULL REFERENCES accounts (id),
    to_account   bigint NOT NULL REFERENCES accounts (id),
    amount       bigint NOT NULL CHECK (amount > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (from_account <> to_account)
);

CREATE TABLE entries (
    id          bigserial PRIMARY KEY,
    transfer_id bigint NOT NULL REFERENCES transfers (id),
    account_id  bigint NOT NULL REFERENCES accounts (id),
    amount      bigint NOT NULL CHECK (amount <> 0)
);
CREATE INDEX entries_account ON entries (account_id, id);

CREATE TABLE idempotency_keys (
    key         text PRIMARY KEY,
    transfer_id bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION transfer(p_from bigint, p_to bigint, p_amount bigint, p_key text)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_id bigint := nextval('transfers_id_seq');
BEGIN
    IF p_amount <= 0 THEN
        RAISE EXCEPTION 'amount must be positive';
    END IF;
    -- A repeated key fails here with unique_violation, before anything moves.
    INSERT INTO idempotency_keys (key, transfer_id) VALUES (p_key, v_id);
    INSERT INTO transfers (id, from_account, to_account, amount)
        VALUES (v_id, p_from, p_to, p_amount);
    INSERT INTO entries (transfer_id, account_id, amount)
        VALUES (v_id, p_from, -p_amount), (v_id, p_to, p_amount);
    -- Row locks in ascending id order, so two opposite transfers cannot deadlock.
    IF p_from < p_to THEN
        UPDATE accounts SET balance = balance - p_amount WHERE id = p_from AND balance >= p_amount;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'insufficient funds or unknown account %', p_from;
        END IF;
        UPDATE accounts SET balance = balance + p_amount WHERE id = p_to;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown account %', p_to;
        END IF;
    ELSE
        UPDATE accounts SET balance = balance + p_amount WHERE id = p_to;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown account %', p_to;
        END IF;
        UPDATE accounts SET balance = balance - p_amount WHERE id = p_from AND balance >= p_amount;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'insufficient funds or unknown account %', p_from;
        END IF;
    END IF;
    RETURN v_id;
END;
$$;

INSERT INTO accounts (id, balance)
SELECT g, :balance FROM generate_series(1, :accounts) AS g;

VACUUM ANALYZE accounts;
