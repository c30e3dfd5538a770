import PostgresProxy

/// The PostgreSQL engine's users (ConciergeAuth's directory with PostgreSQL's keys).
typealias UserDirectory = PostgresUsers
