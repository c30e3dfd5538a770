import ConciergeRandom
import ConciergeConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOPosix
import Prometheus
import ProxyCore
import Synchronization

// The proxy's listeners and the clients they accept: binding (one socket per event loop on
// Linux), making each accepted connection's handler through the engine, the session registry's
// bookkeeping and cancel routing, and shutdown (stop accepting, drain, close).
extension ProxyRuntime {
    // MARK: Listening

    /// Binds every endpoint of the proxy. Throws (having bound nothing) if any address fails.
    ///
    /// On Linux each event loop gets its own listening socket on the same address
    /// (SO_REUSEPORT): the kernel spreads new connections over the loops and each connection is
    /// accepted and served by one thread, with no hand-off to register it elsewhere. In a
    /// connection storm that hand-off cost about 50 µs of CPU per connection.
    public func start() async throws {
        let configuration = self.configuration
        var addresses = [configuration.listen]
        for endpoint in configuration.endpoints { addresses.append(endpoint.listen) }
        var bound: [any Channel] = []
        do {
            for (endpointIndex, address) in addresses.enumerated() {
                let loops = Self.acceptingLoops(eventLoops)
                if loops.count > 1 {
                    // SO_REUSEPORT would also join a socket that another process of this user
                    // (a second Concierge by mistake) listens on, silently splitting its clients.
                    // A plain bind fails on any listener there: fail as a single socket would.
                    try Self.probeBind(address)
                }
                for eventLoop in loops {
                    let channel = try await makeBootstrap(on: eventLoop, endpoint: endpointIndex).bind(host: address.host, port: address.port).get()
                    bound.append(channel)
                }
                logger.info("listening", metadata: ["concierge.listen": "\(address)"])
            }
        } catch {
            for channel in bound { try? await channel.close() }
            throw error
        }
        state.withLockedValue { $0.listeners = bound }
        startCertificateChecks()
        startMonitors()
    }

    /// Every few seconds: a renewed certificate or key file is loaded for new TLS clients.
    private func startCertificateChecks() {
        let logger = self.logger
        let task = eventLoops[0].scheduleRepeatedTask(initialDelay: .seconds(2), delay: .seconds(2)) { [weak self] _ in
            guard let self, let source = self.state.withLockedValue({ $0.serverTLS }) else { return }
            source.reloadIfChanged(logger: logger)
        }
        state.withLockedValue { $0.certificateCheck = task }
    }

    /// The loops that accept connections: all of them where SO_REUSEPORT balances connections
    /// (Linux); elsewhere one listener whose connections are spread over every loop.
    private static func acceptingLoops(_ eventLoops: [any EventLoop]) -> [(any EventLoop)?] {
        #if os(Linux)
        return eventLoops.map { $0 }
        #else
        return [nil]
        #endif
    }

    /// Binds a plain socket to `address` and closes it, without listening: a socket that
    /// listened, even for a moment, would accept clients that then went unserved (a client that
    /// connected as the proxy started got no answer at all; the differential fuzzer found it).
    private static func probeBind(_ address: HostPort) throws {
        #if os(Linux)
        let resolved = try SocketAddress.makeAddressResolvingHost(address.host, port: address.port)
        let fd = Glibc.socket(resolved.protocol.rawValue, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        defer { _ = Glibc.close(fd) }
        var one: Int32 = 1
        _ = Glibc.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = resolved.withSockAddr { pointer, size in Glibc.bind(fd, pointer, socklen_t(size)) }
        guard result == 0 else { throw IOError(errnoCode: errno, reason: "bind(\(address))") }
        #endif
    }

    private static var reusePort: NIOBSDSocket.Option { NIOBSDSocket.Option(rawValue: SO_REUSEPORT) }

    #if os(Linux)
    /// TCP_DEFER_ACCEPT (Linux), for engines whose client speaks first (`clientSpeaksFirst`): the
    /// kernel hands over a new connection only once its first bytes (PostgreSQL's SSLRequest or
    /// startup packet) have arrived, so the
    /// accept and the first read happen in one wake-up instead of two. PgBouncer sets it too
    /// (`tcp_defer_accept`, on by default on Linux). The value is how long, in seconds, the kernel
    /// waits for those bytes before handing the connection over anyway.
    private static var deferAccept: ChannelOptions.Types.SocketOption {
        ChannelOptions.Types.SocketOption(
            level: NIOBSDSocket.OptionLevel(rawValue: CInt(IPPROTO_TCP)),
            name: NIOBSDSocket.Option(rawValue: TCP_DEFER_ACCEPT))
    }
    #endif

    private func makeBootstrap(on eventLoop: (any EventLoop)?, endpoint: Int) -> ServerBootstrap {
        let bootstrap: ServerBootstrap
        if let eventLoop {
            bootstrap = ServerBootstrap(group: eventLoop)
                .serverChannelOption(ChannelOptions.socketOption(Self.reusePort), value: 1)
        } else {
            bootstrap = ServerBootstrap(group: group)
        }
        #if os(Linux)
        let deferring = Engine.clientSpeaksFirst ? bootstrap.serverChannelOption(Self.deferAccept, value: 45) : bootstrap
        #else
        let deferring = bootstrap
        #endif
        return deferring
            .serverChannelOption(ChannelOptions.backlog, value: 4096)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            // Accepted sockets inherit SO_KEEPALIVE from the listener: no setsockopt per
            // connection. (TCP_NODELAY is NIO's default.)
            .serverChannelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
            .serverChannelInitializer { [unowned self] channel in
                // Made and added on the channel's loop: the handlers are not Sendable.
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ListenerBackoff.handler(listener: "client", logger: self.logger),
                        ClientAcceptor(runtime: self, endpoint: endpoint))
                }
            }
            .childChannelInitializer { [unowned self] channel in
                // Only for a client accepted on another loop than its own (one listener for every
                // loop, off Linux): `ClientAcceptor` sets up the others without NIO's futures.
                guard ListenerBackoff.admitClient(logger: self.logger) else { return channel.close() }
                // NIO calls this on the channel's loop. The work is done synchronously and
                // answered with the loop's cached succeeded future: no future is allocated per
                // connection (`makeCompletedFuture` made one).
                do {
                    try self.initializeClient(channel, endpoint: endpoint)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
    }

    /// Sets up a client accepted on its own loop, where NIO's `ServerBootstrap` would make about
    /// ten futures and callbacks per connection (applying no child options, calling the
    /// initializer, checking the listener, registering on a task of its own) before the first
    /// byte is read: about 20,000 instructions per login, 14% of an md5 login with its query
    /// (counted with `bench/profile/callgrind.sh -C`). Here, in the listener's own read event:
    /// the session handler is added and the socket registered and made active at once.
    ///
    /// A client whose loop is another (one listener for every loop, as off Linux) goes on
    /// to NIO's own `AcceptHandler`, next in the listener's pipeline, as before.
    final class ClientAcceptor: ChannelInboundHandler {
        typealias InboundIn = any Channel

        private unowned let runtime: ProxyRuntime
        private let endpoint: Int

        init(runtime: ProxyRuntime, endpoint: Int) {
            self.runtime = runtime
            self.endpoint = endpoint
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let client = Self.unwrapInboundIn(data)
            guard client.eventLoop === context.eventLoop else {
                context.fireChannelRead(data)
                return
            }
            guard ListenerBackoff.admitClient(logger: runtime.logger) else {
                client.close(promise: nil)
                return
            }
            do {
                try runtime.initializeClient(client, endpoint: endpoint)
            } catch {
                // Only a socket closed under the proxy fails here (setting its option).
                runtime.logger.debug("could not set up an accepted client", metadata: ["concierge.error": "\(error)"])
                client.close(promise: nil)
                return
            }
            // What NIO does for a socket that is already connected (as its
            // `withConnectedSocket` bootstraps do): register with the loop's selector, then
            // channelActive, which starts reading. If registration fails (the loop is shutting
            // down), NIO closes the socket before it was ever active, as on the bootstrap's path:
            // the session then ends in `handlerRemoved`, with no `channelInactive`.
            client._channelCore.registerAlreadyConfigured0(promise: nil)
        }
    }

    /// An accepted client's options and session handler.
    fileprivate func initializeClient(_ channel: any Channel, endpoint: Int) throws {
        // Set synchronously here rather than as child options, which NIO applies one future at
        // a time for every accepted connection. Only the receive allocator: each option set costs
        // about 2,000 instructions per connection (SwiftNIO finds its kind by a chain of dynamic
        // casts), and NIO's default of 4 reads per readiness event suits clients as well as the
        // 16 set here until stop 31 did (a read that does not fill its buffer ends the batch
        // anyway; only a client's first large message takes another turn of the loop).
        try channel.syncOptions?.setOption(ChannelOptions.recvAllocator, value: ClientReceiveAllocator())
        let session = makeSession(on: channel.eventLoop, endpoint: endpoint)
        do {
            try channel.pipeline.syncOperations.addHandler(session)
        } catch {
            // Never reached in practice (a new channel's pipeline takes a handler); if it were,
            // the session would never close: unregister it here.
            sessionClosed(session)
            throw error
        }
    }

    /// The session for a new client. `sessionClosed` must follow, once, when it closes.
    func makeSession(on eventLoop: any EventLoop, endpoint: Int = 0) -> Engine.ClientHandler {
        clientCount.add(1, ordering: .relaxed)
        ListenerBackoff.clientOpened()
        metrics.clientConnectionsReceived[endpoint].increment()
        return state.withLockedValue { state in
            let session = state.sessions.register(random: SecureRandom.uint64) { key in
                engine.makeClientHandler(
                    runtime: self,
                    client: AcceptedClient(endpoint: endpoint, eventLoop: eventLoop, cancelKey: key))
            }
            if state.draining { session.beginDrain() }
            return session
        }
    }

    /// Inlinable: the engine's session calls it once per connection, from its own module, where
    /// the registry's dictionary is specialised.
    @inlinable
    public func sessionClosed(_ session: Engine.ClientHandler) {
        clientCount.subtract(1, ordering: .relaxed)
        ListenerBackoff.clientClosed()
        metrics.clientConnectionsClosed[session.endpoint].increment()
        let promise = state.withLockedValue { state -> EventLoopPromise<Void>? in
            state.sessions.remove(id: session.cancelKey.id)
            if state.draining, state.sessions.isEmpty {
                defer { state.drainedPromise = nil }
                return state.drainedPromise
            }
            return nil
        }
        promise?.succeed(())
    }

    /// A CancelRequest: forwarded to the backend serving the session with that key, if any.
    /// Unknown or wrong keys cancel nothing (and say nothing, as PostgreSQL does).
    /// Cancels what the session with this key runs. The future completes once the database has
    /// the cancel request (it closed the proxy's cancel connection), or at once when there is
    /// nothing to cancel: only then may the client's own cancel connection close, as PostgreSQL
    /// closes it only after signalling the backend (drivers wait for that close before they
    /// send their next statement, which a late cancel would otherwise hit).
    public func cancel(key: CancelKey, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        guard let session = state.withLockedValue({ $0.sessions.session(for: key) }) else {
            logger.debug("ignoring a cancel request with an unknown key")
            return eventLoop.makeSucceededVoidFuture()
        }
        return session.cancelCurrentQuery().hop(to: eventLoop)
    }

    /// The client session with this id (MySQL's `KILL id`), if connected.
    public func session(id: UInt32) -> Engine.ClientHandler? {
        state.withLockedValue { $0.sessions.session(id: id) }
    }

    var clientConnections: Int { clientCount.load(ordering: .relaxed) }

    // MARK: Shutdown

    /// Stops accepting new clients.
    public func stopAccepting() async {
        let listeners = state.withLockedValue { state -> [any Channel] in
            defer { state.listeners = [] }
            return state.listeners
        }
        for channel in listeners { try? await channel.close() }
    }

    /// Closes idle clients now and the others as their transactions end, waiting at most
    /// `timeout`; then closes whatever is left and every backend.
    public func drain(timeout: TimeAmount) async {
        let eventLoop = eventLoops[0]
        let promise = eventLoop.makePromise(of: Void.self)
        let sessions = state.withLockedValue { state -> [Engine.ClientHandler] in
            state.draining = true
            if state.sessions.isEmpty {
                promise.succeed(())
            } else {
                state.drainedPromise = promise
            }
            return state.sessions.all
        }
        logger.info("draining", metadata: ["concierge.clients": "\(sessions.count)"])
        for session in sessions { session.beginDrain() }
        let timeoutTask = eventLoop.scheduleTask(in: timeout) {
            promise.fail(DrainTimeout())
        }
        do {
            try await promise.futureResult.get()
            timeoutTask.cancel()
        } catch {
            let remaining = state.withLockedValue { $0.sessions.all }
            logger.warning("drain timeout reached; closing remaining clients", metadata: ["concierge.clients": "\(remaining.count)"])
            for session in remaining { session.forceClose() }
        }
        let counters = pool.leaseCounters
        logger.info("backend leases", metadata: [
            "concierge.leases": "\(counters.total)", "concierge.leases_across_event_loops": "\(counters.acrossEventLoops)",
        ])
        for sessions in loopSessions.values { sessions.stop() }
        state.withLockedValue { $0.certificateCheck?.cancel() }
        stopMonitors()
        let pools = allPools
        let drained = EventLoopFuture.andAllComplete(pools.map { $0.shutdown(on: eventLoop) }, on: eventLoop)
        let closeTask = eventLoop.scheduleTask(in: .seconds(2)) { for pool in pools { pool.closeAll() } }
        // A backend still logging in (to a database that stopped answering) is not waited for
        // beyond that: the process exits, which closes it.
        let finished = eventLoop.makePromise(of: Void.self)
        let settled = NIOLockedValueBox(false)
        let complete: @Sendable () -> Void = {
            if settled.withLockedValue({ done in defer { done = true }; return !done }) { finished.succeed(()) }
        }
        drained.whenComplete { _ in complete() }
        let giveUp = eventLoop.scheduleTask(in: .seconds(3)) {
            self.logger.warning("backends still opening at shutdown are abandoned")
            complete()
        }
        try? await finished.futureResult.get()
        closeTask.cancel()
        giveUp.cancel()
    }

}

/// The drain did not end within its timeout.
private struct DrainTimeout: Error {}
