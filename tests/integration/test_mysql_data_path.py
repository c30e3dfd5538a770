"""What passes through a MySQL proxy unchanged: multi-statements (CLIENT_MULTI_STATEMENTS),
multi-results from a stored procedure, LOAD DATA LOCAL INFILE, a 20 MB result (a single value of
more than one 16 MB packet, and many rows) and a 17 MB statement. The proxy has one backend, so
after each the other client's turn shows the backend was returned in a usable state."""

import hashlib
import string

import pymysql
import pytest
from pymysql.constants import CLIENT

MB = 1024 * 1024


@pytest.fixture(scope="module")
def data_tables(mariadb):
    mariadb.create_table("multi", "id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)")
    mariadb.create_table("infile_rows", "id INT PRIMARY KEY, v VARCHAR(100)")
    mariadb.create_table("big", "id INT PRIMARY KEY, b LONGTEXT")
    mariadb.query("DROP PROCEDURE IF EXISTS two_results")
    mariadb.query("CREATE PROCEDURE two_results(IN n INT) BEGIN "
                  "SELECT n AS a; SELECT n + 1 AS b, 'x' AS c UNION ALL SELECT n + 2, 'y'; END")
    mariadb.query("DROP PROCEDURE IF EXISTS fails_after_one")
    mariadb.query("CREATE PROCEDURE fails_after_one() BEGIN "
                  "SELECT 1 AS a; SELECT * FROM no_such_table; END")


@pytest.fixture
def p(mysql_proxy, data_tables):
    """A proxy with a single backend; at the end another client must still get it."""
    target = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=10)
    yield target
    target.assert_serves()


def other_client_served(p) -> None:
    with p.connect() as other, other.cursor() as cur:
        cur.execute("SELECT 'other'")
        assert cur.fetchone() == ("other",)


def results(cur) -> list:
    """Every result of the statement just executed: rows, or the affected-row count."""
    out = []
    while True:
        out.append(list(cur.fetchall()) if cur.description else ("affected", cur.rowcount))
        if not cur.nextset():
            return out


def test_multi_statements(p):
    conn = p.connect(client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1; SELECT 2, 'two'; INSERT INTO multi (v) VALUES ('a'), ('b'); "
                    "SELECT COUNT(*) FROM multi WHERE v IN ('a', 'b')")
        assert results(cur) == [[(1,)], [(2, "two")], ("affected", 2), [(2,)]]
        # A transaction inside one multi-statement; the backend is kept until its COMMIT.
        cur.execute("BEGIN; INSERT INTO multi (v) VALUES ('c'); SELECT COUNT(*) FROM multi; COMMIT")
        assert results(cur) == [("affected", 0), ("affected", 1), [(3,)], ("affected", 0)]
        other_client_served(p)
        # An error stops the statements after it; the connection goes on.
        cur.execute("SELECT 10; SELECT * FROM no_such_table; SELECT 30")
        assert cur.fetchall() == ((10,),)
        with pytest.raises(pymysql.err.ProgrammingError) as exc:
            cur.nextset()
        assert exc.value.args[0] == 1146
        cur.execute("SELECT 'after'")
        assert cur.fetchall() == (("after",),)
        other_client_served(p)
    finally:
        conn.close()


def test_multi_results_from_a_stored_procedure(p):
    with p.connect() as conn, conn.cursor() as cur:
        cur.execute("CALL two_results(5)")
        # Two result sets, then the CALL's own OK.
        assert results(cur) == [[(5,)], [(6, "x"), (7, "y")], ("affected", 0)]
        other_client_served(p)
        cur.execute("CALL fails_after_one()")
        assert cur.fetchall() == ((1,),)
        with pytest.raises(pymysql.err.ProgrammingError) as exc:
            cur.nextset()
        assert exc.value.args[0] == 1146
        cur.execute("CALL two_results(1)")
        assert results(cur)[:2] == [[(1,)], [(2, "x"), (3, "y")]]
        other_client_served(p)


def test_load_data_local_infile(p, tmp_path):
    rows = 100_000  # about 2.5 MB: many packets of file content
    path = tmp_path / "rows.csv"
    path.write_text("".join(f"{i},row {i} {'x' * 10}\n" for i in range(rows)))
    with p.connect(local_infile=True) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM infile_rows")
        cur.execute("LOAD DATA LOCAL INFILE %s INTO TABLE infile_rows FIELDS TERMINATED BY ',' (id, v)", (str(path),))
        assert cur.rowcount == rows
        cur.execute("SELECT COUNT(*), SUM(id), MAX(v) FROM infile_rows")
        assert cur.fetchone() == (rows, rows * (rows - 1) // 2, f"row 99999 {'x' * 10}")
        other_client_served(p)
        # A file the client refuses to read (it does not exist): the error reaches the client.
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("LOAD DATA LOCAL INFILE %s INTO TABLE infile_rows", (str(tmp_path / "missing.csv"),))
        cur.execute("SELECT COUNT(*) FROM infile_rows")
        assert cur.fetchone() == (rows,)
        other_client_served(p)


def test_a_20_mb_result(p):
    with p.connect() as conn, conn.cursor() as cur:
        # One value larger than a 16 MB packet: split by the server, joined by the client.
        cur.execute("SELECT REPEAT('abcdefghij', 2 * 1024 * 1024), 'after'")
        value, after = cur.fetchone()
        assert len(value) == 20 * MB and value[:20] == "abcdefghij" * 2 and value[-10:] == "abcdefghij"
        assert after == "after"
        other_client_served(p)
        # 20 000 rows of 1 KB.
        cur.execute("SELECT seq, REPEAT(CHAR(65 + seq % 26 USING ascii), 1024) FROM seq_1_to_20000")
        got = cur.fetchall()
        assert len(got) == 20000
        assert all(len(v) == 1024 and v[0] == chr(65 + n % 26) for n, v in got)
        assert [n for n, _ in got] == list(range(1, 20001))
        other_client_served(p)


def test_a_17_mb_statement(p):
    alphabet = (string.ascii_letters + string.digits).encode()
    value = bytes(alphabet[b % len(alphabet)] for b in hashlib.shake_256(b"concierge").digest(17 * MB)).decode()
    with p.connect(max_allowed_packet=64 * MB) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM big")
        cur.execute("INSERT INTO big (id, b) VALUES (1, %s)", (value,))
        assert cur.rowcount == 1
        cur.execute("SELECT LENGTH(b), SHA2(b, 256) FROM big WHERE id = 1")
        assert cur.fetchone() == (17 * MB, hashlib.sha256(value.encode()).hexdigest())
        other_client_served(p)
        # And back: the 17 MB value as a result.
        cur.execute("SELECT b FROM big WHERE id = 1")
        assert cur.fetchone()[0] == value
        other_client_served(p)
