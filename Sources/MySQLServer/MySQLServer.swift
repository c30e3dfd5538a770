/// The MySQL/MariaDB engine on the shared runtime.
public enum MySQLServer {}
