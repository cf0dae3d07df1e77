-- First-start initialisation of the compose PostgreSQL (mounted into
-- /docker-entrypoint-initdb.d; runs once, on an empty data volume).
--
-- One database per service and two login roles per service: <service>_owner owns
-- the database and its schema and runs the migrations; <service> is what the
-- service runs as, granted by the migrations exactly what it needs (for the
-- ledger: read and append the journal, update balances and statuses; no DDL), so
-- its credentials can neither disable the append-only triggers nor rewrite
-- history. The passwords come from the container's environment (deploy/.env):
-- *_DB_PASSWORD and *_DB_OWNER_PASSWORD, which must match the passwords in
-- *_DATABASE_URL and *_MIGRATION_DATABASE_URL.
--
-- Needs psql 15 or newer (\getenv).

\set ON_ERROR_STOP on

\getenv identity_password IDENTITY_DB_PASSWORD
\getenv account_password ACCOUNT_DB_PASSWORD
\getenv ledger_password LEDGER_DB_PASSWORD
\getenv identity_owner_password IDENTITY_DB_OWNER_PASSWORD
\getenv account_owner_password ACCOUNT_DB_OWNER_PASSWORD
\getenv ledger_owner_password LEDGER_DB_OWNER_PASSWORD

SELECT :{?identity_password} AND :{?account_password} AND :{?ledger_password}
   AND :{?identity_owner_password} AND :{?account_owner_password} AND :{?ledger_owner_password}
   AS passwords_set \gset
\if :passwords_set
\else
  DO $$ BEGIN
    RAISE EXCEPTION 'IDENTITY_DB_PASSWORD, ACCOUNT_DB_PASSWORD, LEDGER_DB_PASSWORD and their *_DB_OWNER_PASSWORD must be set (see deploy/.env.example)';
  END $$;
\endif

CREATE ROLE identity_owner LOGIN PASSWORD :'identity_owner_password';
CREATE ROLE account_owner LOGIN PASSWORD :'account_owner_password';
CREATE ROLE ledger_owner LOGIN PASSWORD :'ledger_owner_password';
CREATE ROLE identity LOGIN PASSWORD :'identity_password';
CREATE ROLE account LOGIN PASSWORD :'account_password';
CREATE ROLE ledger LOGIN PASSWORD :'ledger_password';

CREATE DATABASE identity OWNER identity_owner ENCODING 'UTF8' TEMPLATE template0;
CREATE DATABASE account OWNER account_owner ENCODING 'UTF8' TEMPLATE template0;
-- The ledger's text columns are identifiers and codes: under the C collation they
-- compare byte by byte, not through the C library's locale rules, which was about
-- a tenth of the database's time per posting (ARCHITECTURE.md, "Lookups stay
-- cheap").
CREATE DATABASE ledger OWNER ledger_owner ENCODING 'UTF8' LOCALE_PROVIDER libc LC_COLLATE 'C' TEMPLATE template0;

-- Nobody but each database's two roles (and superusers) may connect.
REVOKE ALL ON DATABASE identity FROM PUBLIC;
REVOKE ALL ON DATABASE account FROM PUBLIC;
REVOKE ALL ON DATABASE ledger FROM PUBLIC;
GRANT CONNECT ON DATABASE identity TO identity_owner, identity;
GRANT CONNECT ON DATABASE account TO account_owner, account;
GRANT CONNECT ON DATABASE ledger TO ledger_owner, ledger;
