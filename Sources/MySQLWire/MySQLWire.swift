/// The MySQL/MariaDB client/server protocol, as Concierge speaks it on both sides: to clients as
/// their server, and to the database as its client. Pure values and functions over `ByteBuffer`s.
///
/// - Framing: ``MySQLPacketDecoder`` joins packets into logical payloads (``MySQLPacket``) with a
///   size cap and sequence-id checks; `ByteBuffer.writeMySQLPacket` splits them again.
/// - Connection phase: ``MySQLHandshakeV10``, ``MySQLSSLRequest``, ``MySQLHandshakeResponse41``,
///   ``MySQLAuthSwitchRequest``, ``MySQLAuthMoreData``; scrambles, RSA and nonces in
///   ``MySQLAuthentication``, ``MySQLRSAKeyPair``, ``MySQLNonce``.
/// - Command phase: ``MySQLCommand`` and ``MySQLCommandPacket``; ``MySQLOKPacket`` (with
///   ``MySQLSessionStateChange``), ``MySQLErrPacket``, ``MySQLEOFPacket``; and
///   ``MySQLResponseTracker``, which tells where each command's response ends.
public enum MySQLWire {}
