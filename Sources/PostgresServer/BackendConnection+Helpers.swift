import ConciergeRuntime
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresProxy
import PostgresWire

// The SQL helpers the client session and the tests know by these names (now `ParameterSync`),
// and the pieces of the handler that need none of its state.
extension BackendConnection {
    /// Whether an ErrorResponse body has severity FATAL or PANIC (`V`, else `S`).
    static func endsSession(_ body: ByteBuffer) -> Bool {
        var body = body
        var severity: ByteBuffer?
        while let field = body.readInteger(as: UInt8.self), field != 0 {
            guard let value = body.pgReadCStringSlice() else { return false }
            if field == UInt8(ascii: "V") { severity = value; break }
            if field == UInt8(ascii: "S") { severity = value }
        }
        guard let severity else { return false }
        return severity.readableBytesView.elementsEqual("FATAL".utf8) || severity.readableBytesView.elementsEqual("PANIC".utf8)
    }

    /// Sends a CancelRequest for this backend over a new connection to the database. The future
    /// completes when the database closed that connection (it has signalled the backend by then),
    /// or after 5 s, or when the connection failed.
    @discardableResult
    func sendCancelRequest() -> EventLoopFuture<Void> {
        let processID = backendProcessID
        let secretKey = backendSecretKey
        guard processID != 0 else { return eventLoop.makeSucceededVoidFuture() }
        let eventLoop = self.eventLoop
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(.seconds(5))
            .connect(to: address)
            .flatMap { channel in
                var buffer = channel.allocator.buffer(capacity: 16)
                PGEncode.cancelRequest(processID: processID, secretKey: secretKey, into: &buffer)
                channel.writeAndFlush(buffer, promise: nil)
                let closed = channel.closeFuture
                let timeout = eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
                closed.whenComplete { _ in timeout.cancel() }
                return closed
            }
            .recover { _ in }
    }

    static var resyncName: String { ParameterSync.resyncName }
    /// A value no client can ask for (startup values cannot hold a NUL): "not the baseline".
    static var lostBaseline: String { ParameterSync.lostBaseline }

    /// See `ParameterSync.parameterSyncStatement`.
    static func parameterSyncStatement(
        from current: [String: String], to desired: [String: String], baseline: [String: String] = [:]
    ) -> String? {
        ParameterSync.parameterSyncStatement(from: current, to: desired, baseline: baseline)
    }

    /// See `ParameterSync.parameterSyncSQL`.
    static func parameterSyncSQL(
        from current: [String: String], to desired: [String: String], baseline: [String: String] = [:],
        fromDefaults: Bool = false
    ) -> String? {
        ParameterSync.parameterSyncSQL(from: current, to: desired, baseline: baseline, fromDefaults: fromDefaults)
    }

    static func quoteLiteral(_ value: String) -> String { ParameterSync.quoteLiteral(value) }
    static func quoteIdentifier(_ name: String) -> String { ParameterSync.quoteIdentifier(name) }
}

/// Every open backend of this process by target and pid: a NotificationResponse names the
/// sending backend's pid, which the receiving backend maps to the client that backend last
/// served (`BackendConnection.notifyingClient`).
enum BackendRegistry {
    private struct Identity: Hashable {
        var address: SocketAddress
        var processID: Int32
    }

    /// Strong references, removed when the backend's channel goes inactive (`unregister`, which
    /// every registered backend reaches): a weak reference would give every backend a side
    /// table, and make each of its retains and releases (several per transaction) take the
    /// runtime's slow path.
    private static let table = NIOLockedValueBox<[Identity: BackendConnection]>([:])

    static func register(_ backend: BackendConnection, processID: Int32) {
        let identity = Identity(address: backend.address, processID: processID)
        table.withLockedValue { $0[identity] = backend }
    }

    /// Removes `backend`'s entry, unless another backend took its pid since.
    static func unregister(_ backend: BackendConnection, processID: Int32) {
        let identity = Identity(address: backend.address, processID: processID)
        table.withLockedValue { table in
            if table[identity] === backend { table[identity] = nil }
        }
    }

    static func backend(at address: SocketAddress, processID: Int32) -> BackendConnection? {
        table.withLockedValue { $0[Identity(address: address, processID: processID)] }
    }
}
