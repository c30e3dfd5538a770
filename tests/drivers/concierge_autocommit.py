"""A pytest plugin for tests/drivers/run.py's `mysqlclient-autocommit` run: mysqlclient's suite with
its connections in autocommit mode unless a test asks otherwise.

MySQLdb connects with autocommit off by default, so through the proxy each of the suite's
connections holds its backend from its first statement to its close, as a transaction does (the
proxy's rule for autocommit off): the suite then barely multiplexes. With autocommit on, every
statement outside an explicit transaction may run on another backend. Tests that rely on
autocommit off (a rollback undoing an insert) fail directly too and are not differences.
"""

from __future__ import annotations


def pytest_configure(config):
    import MySQLdb.connections

    connection = MySQLdb.connections.Connection
    original = connection.__init__

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("autocommit", True)
        original(self, *args, **kwargs)

    connection.__init__ = __init__
