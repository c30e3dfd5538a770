"""No session state leaks between clients that share backends.

Many clients run randomized sequences of SET (tracked and not), SET LOCAL, prepared statements,
temporary tables, advisory locks and plain transactions through a small pool. After every step
each client checks that what it sees (settings, its statements' results, its temporary tables,
its advisory locks) is exactly its own. The seed is printed; CONCIERGE_ISOLATION_SEED=N replays a
run, CONCIERGE_ISOLATION_SECONDS sets its length.
"""

import os
import random
import threading
import time
from dataclasses import dataclass, field

import psycopg

from helpers import DIRECT

CLIENTS = 12
PINNING_CLIENTS = 2       # the others never pin, so 3 backends always leave one to share
TIMEZONES = ["UTC", "America/New_York", "Asia/Tokyo", "Europe/Paris", "Australia/Sydney"]
DATESTYLES = ["ISO, MDY", "SQL, DMY", "Postgres, MDY", "German, DMY"]


@dataclass
class Expected:
    timezone: str
    datestyle: str
    application_name: str
    work_mem: str | None = None
    temp_tables: set[str] = field(default_factory=set)
    advisory_locks: set[int] = field(default_factory=set)
    pinned: bool = False


def run_client(index: int, conn: psycopg.Connection, seed: int, deadline: float,
               defaults: dict[str, str], errors: list[str], steps: list[int]) -> None:
    rng = random.Random(seed * 1000 + index)
    me = Expected(timezone=defaults["timezone"], datestyle=defaults["datestyle"],
                  application_name=defaults["application_name"])
    actions = ["tracked", "set_local", "prepared", "plain_tx", "reset"]
    if index < PINNING_CLIENTS:
        actions += ["untracked", "temp_table", "advisory_lock"]
    count = 0
    try:
        while time.monotonic() < deadline:
            action = rng.choice(actions)
            step = f"client {index} step {count} ({action})"
            if action == "tracked":
                me.timezone = rng.choice(TIMEZONES)
                me.datestyle = rng.choice(DATESTYLES)
                me.application_name = f"client{index}_{count}"
                conn.execute(f"set timezone = '{me.timezone}'")
                conn.execute(f"set datestyle = '{me.datestyle}'")
                conn.execute(f"set application_name = '{me.application_name}'")
            elif action == "reset":
                conn.execute("reset timezone")
                me.timezone = defaults["timezone"]
            elif action == "set_local":
                local = rng.choice(TIMEZONES)
                with conn.transaction():
                    conn.execute(f"set local timezone = '{local}'")
                    got = conn.execute("show timezone").fetchone()[0]
                    if got != local:
                        errors.append(f"{step}: SET LOCAL timezone {local!r}, saw {got!r}")
            elif action == "prepared":
                n = rng.randrange(1000)
                got = conn.execute(f"select %s::int + {index}, 'c{index}'", (n,), prepare=True).fetchone()
                if got != (n + index, f"c{index}"):
                    errors.append(f"{step}: prepared statement gave {got!r}, expected {(n + index, f'c{index}')!r}")
            elif action == "plain_tx":
                with conn.transaction():
                    conn.execute("insert into iso_rows values (%s, %s)", (index, count))
                    got = conn.execute("select count(*) from iso_rows where client = %s and step = %s",
                                       (index, count)).fetchone()[0]
                    if got != 1:
                        errors.append(f"{step}: own row seen {got} times")
            elif action == "untracked":
                me.work_mem = f"{rng.randrange(1, 64)}MB"
                conn.execute(f"set work_mem = '{me.work_mem}'")
                me.pinned = True
            elif action == "temp_table":
                name = f"tmp_{index}_{count}"
                conn.execute(f"create temp table {name} (v int)")
                me.temp_tables.add(name)
                me.pinned = True
            elif action == "advisory_lock":
                key = 1_000_000 * (index + 1) + len(me.advisory_locks)  # never another client's
                conn.execute("select pg_advisory_lock(%s)", (key,))
                me.advisory_locks.add(key)
                me.pinned = True
            check(conn, me, defaults, step, errors)
            count += 1
    except Exception as e:  # noqa: BLE001 - reported as a failure of this client
        errors.append(f"client {index} step {count}: {type(e).__name__}: {e}")
    steps[index] = count


def check(conn: psycopg.Connection, me: Expected, defaults: dict[str, str], step: str,
          errors: list[str]) -> None:
    row = conn.execute(
        "select current_setting('timezone'), current_setting('datestyle'), "
        "current_setting('application_name'), current_setting('work_mem'), "
        "(select coalesce(array_agg(c.relname::text order by c.relname), '{}') from pg_class c "
        "   where c.relnamespace = pg_my_temp_schema() and c.relkind = 'r'), "
        "(select coalesce(array_agg(objid::int order by objid), '{}') from pg_locks "
        "   where locktype = 'advisory' and pid = pg_backend_pid() and granted)").fetchone()
    timezone, datestyle, application_name, work_mem, temp_tables, locks = row
    expected = (me.timezone, me.datestyle, me.application_name, me.work_mem or defaults["work_mem"],
                sorted(me.temp_tables), sorted(me.advisory_locks))
    seen = (timezone, datestyle, application_name, work_mem, list(temp_tables), list(locks))
    if seen != expected:
        errors.append(f"{step}: saw {seen!r}, expected {expected!r}")
    if conn.info.parameter_status("TimeZone") != me.timezone:
        errors.append(f"{step}: ParameterStatus TimeZone {conn.info.parameter_status('TimeZone')!r}, "
                      f"expected {me.timezone!r}")


def test_no_state_leaks_between_clients(proxy, pg):
    seed = int(os.environ.get("CONCIERGE_ISOLATION_SEED") or random.randrange(1_000_000))
    seconds = float(os.environ.get("CONCIERGE_ISOLATION_SECONDS", "15"))
    print(f"\nisolation test seed: {seed} (replay with CONCIERGE_ISOLATION_SEED={seed})")
    pg.create_table("iso_rows", "client int, step int")
    p = proxy(max_connections_percent=3, connection_borrow_timeout=30)
    conns = [p.connect(prepare_threshold=0) for _ in range(CLIENTS)]
    try:
        defaults = dict(zip(["timezone", "datestyle", "application_name", "work_mem"],
                            conns[0].execute("select current_setting('timezone'), current_setting('datestyle'), "
                                             "current_setting('application_name'), "
                                             "current_setting('work_mem')").fetchone()))
        errors: list[str] = []
        steps = [0] * CLIENTS
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=run_client, args=(i, conns[i], seed, deadline, defaults, errors, steps))
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 120)
        print(f"steps per client: {steps} (total {sum(steps)})")
        assert not errors, f"seed {seed}: {len(errors)} problems, first ones:\n" + "\n".join(errors[:10])
        assert all(s > 0 for s in steps), steps
    finally:
        for c in conns:
            c.close()
    if not DIRECT:
        log = p.log()
        pinned = log.count("session pinned")
        print(f"pinned sessions: {pinned} (at most {PINNING_CLIENTS} clients may pin)")
        assert pinned <= PINNING_CLIENTS, log
