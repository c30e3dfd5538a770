/// The MySQL/MariaDB client/server protocol, as Concierge speaks it on both sides: to clients as
/// their server, and to the database as its client. Pure values and functions over `ByteBuffer`s.
public enum MySQLWire {}
