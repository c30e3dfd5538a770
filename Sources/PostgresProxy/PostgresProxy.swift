// PostgresProxy: the PostgreSQL engine's session logic as pure state machines.
//
// Each machine is a struct with an enum state whose cases carry their data; events are mutating
// functions returning an action for the NIO handler in ConciergeServer to run. Nothing here
// touches a socket or an event loop, so every scenario is tested event by event
// (Tests/PostgresProxyTests) with an injected clock.
