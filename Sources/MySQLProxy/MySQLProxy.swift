/// The MySQL engine's pure machines: client login, backend login, the client session.
public enum MySQLProxy {}
