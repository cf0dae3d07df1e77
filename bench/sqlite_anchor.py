#!/usr/bin/env python3
"""The SQLite anchor of `make bench`: the transfer of bench/anchor.sql done the plain
way on one SQLite connection. WAL mode, synchronous=FULL, one transaction per
transfer (BEGIN IMMEDIATE; idempotency key, transfer row, two entries, two guarded
balance updates; COMMIT), uniform random pairs among --accounts accounts, for
--warmup then --duration seconds. Prints one JSON line:
{"scenario":"sqlite-anchor","ok":n,"errors":n,"seconds":..,"rate":..,"p50_ms":..,"p99_ms":..,"p999_ms":..}

Only the Python standard library is used.
"""

import argparse
import json
import os
import random
import sqlite3
import sys
import time

SCHEMA = """
CREATE TABLE accounts (
    id      INTEGER PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0)
);
CREATE TABLE transfers (
    id           INTEGER PRIMARY KEY,
    from_account INTEGER NOT NULL REFERENCES accounts (id),
    to_account   INTEGER NOT NULL REFERENCES accounts (id),
    amount       INTEGER NOT NULL CHECK (amount > 0),
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now')),
    CHECK (from_account <> to_account)
);
CREATE TABLE entries (
    id          INTEGER PRIMARY KEY,
    transfer_id INTEGER NOT NULL REFERENCES transfers (id),
    account_id  INTEGER NOT NULL REFERENCES accounts (id),
    amount      INTEGER NOT NULL CHECK (amount <> 0)
);
CREATE INDEX entries_account ON entries (account_id, id);
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    transfer_id INTEGER NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now'))
);
"""


class Refused(Exception):
    pass


def transfer(db, source, target, amount, key):
    """One transfer in one transaction; the same rows as transfer() in anchor.sql."""
    cur = db.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        # The next transfer id; BEGIN IMMEDIATE makes this connection the only writer.
        transfer_id = cur.execute(
            "SELECT COALESCE(MAX(id), 0) + 1 FROM transfers"
        ).fetchone()[0]
        # A repeated key fails here (IntegrityError), before anything moves.
        cur.execute(
            "INSERT INTO idempotency_keys (key, transfer_id) VALUES (?, ?)",
            (key, transfer_id),
        )
        cur.execute(
            "INSERT INTO transfers (id, from_account, to_account, amount) VALUES (?, ?, ?, ?)",
            (transfer_id, source, target, amount),
        )
        cur.executemany(
            "INSERT INTO entries (transfer_id, account_id, amount) VALUES (?, ?, ?)",
            ((transfer_id, source, -amount), (transfer_id, target, amount)),
        )
        cur.execute(
            "UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?",
            (amount, source, amount),
        )
        if cur.rowcount != 1:
            raise Refused("insufficient funds or unknown account")
        cur.execute(
            "UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, target)
        )
        if cur.rowcount != 1:
            raise Refused("unknown account")
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--db", required=True, help="database file (created afresh)")
    parser.add_argument("--accounts", type=int, default=10000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--balance", type=int, default=10**12)
    args = parser.parse_args()
    if args.accounts < 2:
        parser.error("--accounts must be at least 2")

    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(args.db + suffix)
        except FileNotFoundError:
            pass
    # Autocommit at the driver level; transactions are explicit.
    db = sqlite3.connect(args.db, isolation_level=None)
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    synchronous = db.execute("PRAGMA synchronous").fetchone()[0]
    if mode.lower() != "wal" or synchronous != 2:
        sys.exit(f"sqlite anchor: journal_mode={mode}, synchronous={synchronous}: not WAL/FULL")
    db.executescript(SCHEMA)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO accounts (id, balance) VALUES (?, ?)",
        ((i, args.balance) for i in range(1, args.accounts + 1)),
    )
    db.execute("COMMIT")

    rng = random.Random()
    prefix = f"{os.getpid()}-{time.time_ns()}"
    start = time.perf_counter()
    measure_from = start + args.warmup
    end = measure_from + args.duration
    latencies = []
    ok = errors = 0
    sequence = 0
    last_done = measure_from
    while True:
        begun = time.perf_counter()
        if begun >= end:
            break
        source = rng.randint(1, args.accounts)
        target = rng.randint(1, args.accounts - 1)
        if target >= source:
            target += 1
        sequence += 1
        try:
            transfer(db, source, target, 1, f"{prefix}-{sequence}")
            succeeded = True
        except (Refused, sqlite3.Error):
            succeeded = False
        done = time.perf_counter()
        if begun < measure_from:
            continue
        last_done = done
        if succeeded:
            ok += 1
            latencies.append(done - begun)
        else:
            errors += 1
    db.close()

    seconds = max(last_done - measure_from, args.duration)
    latencies.sort()

    def ms(q):
        value = quantile(latencies, q)
        return None if value is None else round(value * 1000.0, 3)

    print(
        json.dumps(
            {
                "scenario": "sqlite-anchor",
                "ok": ok,
                "errors": errors,
                "seconds": round(seconds, 3),
                "rate": round(ok / seconds, 3),
                "p50_ms": ms(0.50),
                "p99_ms": ms(0.99),
                "p999_ms": ms(0.999),
            }
        )
    )


if __name__ == "__main__":
    main()
