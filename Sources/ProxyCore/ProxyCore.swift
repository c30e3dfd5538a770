// ProxyCore: the engine-neutral core of Concierge.
//
// What every engine family (PostgreSQL, MySQL/MariaDB) shares lives here, once, as pure values
// and state machines: no sockets, no event loops, time passed in. An engine provides what
// differs (its wire protocol and session machines, how to probe a target's role, how to render a
// proxy error, its cancel key); the NIO runtime in ConciergeServer runs the machines' actions.
//
// Nothing in this module may name a database protocol.
