// ProxyCore: the engine-neutral core of Concierge.
//
// What every engine family (PostgreSQL, MySQL/MariaDB) shares lives here, once, mostly as pure
// values and state machines (no sockets, time passed in), plus the few event-loop drivers that
// run them for any engine (PoolDriver, TargetMonitor). An engine provides what differs, as a
// `DatabaseEngine` (DatabaseEngine.swift): its backend connections, how to open one, how to probe
// a target's role, what its errors say about a target, its client handler and pin reasons; and
// beside that its wire protocol and session machines, how to render a proxy error, its cancel
// key. The NIO runtime in ConciergeServer runs the machines' actions.
//
// Nothing in this module may name a database protocol.
