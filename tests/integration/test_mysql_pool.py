"""The MySQL proxy's pool: 100 PyMySQL clients over a cap of 10 backends (10% of the server's
max_connections=100) with no failed statement, the server never seeing more than 10 of the
proxy's connections; the borrow timeout's ERROR 9501 and the client limit's ERROR 1040, in RDS
Proxy's wording."""

import threading
import time

import pymysql
import pytest

from helpers import DIRECT, wait_for
from mysql_fixtures import ProcesslistSampler

CLIENTS = 100
CAP = 10
SECONDS = 10


def test_100_clients_over_10_backends(mysql_proxy, mariadb):
    """Each client mixes autocommit statements and explicit transactions (BEGIN ... COMMIT or
    ROLLBACK, and autocommit=0 ... COMMIT) and checks after each step that it sees exactly its
    own rows: a backend that carried another client's transaction or lost its own would show."""
    p = mysql_proxy()  # max_connections_percent 10 of max_connections 100
    mariadb.create_table("pool_load", "id INT AUTO_INCREMENT PRIMARY KEY, client INT NOT NULL, "
                                      "step INT NOT NULL, KEY (client)")
    errors: list[str] = []
    committed = [0] * CLIENTS  # rows each client committed
    transactions = [0] * CLIENTS
    connected = threading.Barrier(CLIENTS + 1, timeout=120)
    stop = threading.Event()

    def client(i: int) -> None:
        try:
            conn = p.connect()
        except Exception as e:
            errors.append(f"client {i}: connect: {e!r}")
            connected.abort()
            return
        try:
            connected.wait()
            cur = conn.cursor()
            step = 0

            def own_rows() -> int:
                cur.execute("SELECT COUNT(*) FROM pool_load WHERE client = %s", (i,))
                return cur.fetchone()[0]

            while not stop.is_set():
                kind = (step + i) % 4
                step += 1
                if kind == 0:  # autocommit statements
                    cur.execute("INSERT INTO pool_load (client, step) VALUES (%s, %s)", (i, step))
                    committed[i] += 1
                    assert own_rows() == committed[i], f"autocommit insert: {own_rows()} != {committed[i]}"
                elif kind in (1, 2):  # BEGIN ... COMMIT or ROLLBACK
                    cur.execute("BEGIN")
                    cur.execute("INSERT INTO pool_load (client, step) VALUES (%s, %s), (%s, %s)",
                                (i, step, i, step))
                    assert own_rows() == committed[i] + 2, "inside the transaction"
                    cur.execute("COMMIT" if kind == 1 else "ROLLBACK")
                    if kind == 1:
                        committed[i] += 2
                    assert own_rows() == committed[i], f"after {'COMMIT' if kind == 1 else 'ROLLBACK'}"
                else:  # autocommit=0: the session is in a transaction until COMMIT
                    conn.autocommit(False)
                    cur.execute("INSERT INTO pool_load (client, step) VALUES (%s, %s)", (i, step))
                    cur.execute("SELECT @@autocommit")
                    assert cur.fetchone()[0] == 0
                    assert own_rows() == committed[i] + 1, "with autocommit=0"
                    conn.commit()
                    committed[i] += 1
                    conn.autocommit(True)
                    assert own_rows() == committed[i], "after autocommit=0 and COMMIT"
                transactions[i] += 1
        except threading.BrokenBarrierError:
            pass
        except Exception as e:
            errors.append(f"client {i}, step {transactions[i]}: {e!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    with ProcesslistSampler(mariadb, "app") as sampler:
        for t in threads:
            t.start()
        try:
            connected.wait()  # every client is logged in: now the load runs for SECONDS
            time.sleep(SECONDS)  # the load's duration (not a wait for an event)
        except threading.BrokenBarrierError:
            pass  # a client could not log in: in `errors`
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, f"{len(errors)} failed statements, e.g.:\n" + "\n".join(errors[:10])
    assert all(n > 0 for n in transactions), f"clients that never got a turn: {transactions.count(0)}"
    assert mariadb.scalar("SELECT COUNT(*) FROM pool_load") == sum(committed)
    assert sampler.samples > 10
    if not DIRECT:
        assert 1 <= sampler.max_seen <= CAP, f"the server saw {sampler.max_seen} connections of app"
    print(f"{sum(transactions)} transactions by {CLIENTS} clients in {SECONDS} s; "
          f"at most {sampler.max_seen} server connections of app ({sampler.samples} samples)")


@pytest.mark.proxy_only
def test_borrow_timeout_gives_9501_and_the_client_keeps_its_connection(mysql_proxy):
    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=1)  # one backend
    holder, waiter = p.connect(), p.connect()
    try:
        hc, wc = holder.cursor(), waiter.cursor()
        hc.execute("BEGIN")
        hc.execute("SELECT 1")  # the transaction holds the only backend
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as exc:
            wc.execute("SELECT 1")
        elapsed = time.monotonic() - started
        assert exc.value.args == (9501, "Timed-out waiting to acquire database connection")
        assert 0.9 <= elapsed < 5, elapsed
        # The command-line client shows it as RDS Proxy's documentation does.
        proc = p.cli("SELECT 1", check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip() in ("ERROR 9501 (HY000) at line 1: Timed-out waiting to acquire database connection",
                                       "ERROR 9501 (HY000): Timed-out waiting to acquire database connection"), proc.stderr
        hc.execute("COMMIT")
        # The waiter's connection is still usable once the backend is free.
        wc.execute("SELECT 2")
        assert wc.fetchone() == (2,)
    finally:
        holder.close()
        waiter.close()


@pytest.mark.proxy_only
def test_client_limit_gives_1040(mysql_proxy):
    p = mysql_proxy(max_client_connections=3)
    message = "Number simultaneous connections exceeded (3)"
    # The readiness check's own connection may still be closing: wait until 3 fit.
    clients: list = []

    def fill() -> bool:
        while len(clients) < 3:
            try:
                clients.append(p.connect())
            except pymysql.err.OperationalError:
                return False
        return True

    try:
        wait_for(fill, 10, "3 clients to be let in")
        with pytest.raises(pymysql.err.OperationalError) as exc:
            p.connect()
        assert exc.value.args == (1040, message)
        proc = p.cli("SELECT 1", check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"ERROR 1040 (HY000): {message}", proc.stderr
        # The clients in are served; one leaving lets a new one in.
        for c in clients:
            with c.cursor() as cur:
                cur.execute("SELECT 1")
        clients.pop().close()
        wait_for(fill, 10, "a new client to be let in after one left")
    finally:
        for c in clients:
            c.close()
