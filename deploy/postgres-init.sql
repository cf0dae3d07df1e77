-- First-start initialisation of the compose PostgreSQL (mounted into
-- /docker-entrypoint-initdb.d; runs once, on an empty data volume).
--
-- One database per service, each owned by a login role of its own, so a service
-- can reach only its own data. The role passwords come from the container's
-- environment (deploy/.env): IDENTITY_DB_PASSWORD, ACCOUNT_DB_PASSWORD and
-- LEDGER_DB_PASSWORD, which must match the passwords in IDENTITY_DATABASE_URL,
-- ACCOUNT_DATABASE_URL and LEDGER_DATABASE_URL. The services create their own
-- tables (migrations run at start).
--
-- Needs psql 15 or newer (\getenv).

\set ON_ERROR_STOP on

\getenv identity_password IDENTITY_DB_PASSWORD
\getenv account_password ACCOUNT_DB_PASSWORD
\getenv ledger_password LEDGER_DB_PASSWORD

SELECT :{?identity_password} AND :{?account_password} AND :{?ledger_password} AS passwords_set \gset
\if :passwords_set
\else
  DO $$ BEGIN
    RAISE EXCEPTION 'IDENTITY_DB_PASSWORD, ACCOUNT_DB_PASSWORD and LEDGER_DB_PASSWORD must be set (see deploy/.env.example)';
  END $$;
\endif

CREATE ROLE identity LOGIN PASSWORD :'identity_password';
CREATE ROLE account LOGIN PASSWORD :'account_password';
CREATE ROLE ledger LOGIN PASSWORD :'ledger_password';

CREATE DATABASE identity OWNER identity ENCODING 'UTF8' TEMPLATE template0;
CREATE DATABASE account OWNER account ENCODING 'UTF8' TEMPLATE template0;
CREATE DATABASE ledger OWNER ledger ENCODING 'UTF8' TEMPLATE template0;

-- Nobody but the owner (and superusers) may connect.
REVOKE ALL ON DATABASE identity FROM PUBLIC;
REVOKE ALL ON DATABASE account FROM PUBLIC;
REVOKE ALL ON DATABASE ledger FROM PUBLIC;
