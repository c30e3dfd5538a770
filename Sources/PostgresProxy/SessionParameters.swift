import NIOCore
import PostgresWire

/// A client's session parameters as the proxy carries them from backend to backend
/// (`TrackedParameters`): what the client asked for at login, what it has now, and a lone
/// `SET` of a parameter PostgreSQL does not report (`SQLTrackedSettings`) waiting for its answer.
/// Pure: the session feeds it what the client and the backend said.
public struct SessionParameters {
    /// Lowercased name → the client's current value, applied to whichever backend serves it.
    public var current: [String: String] = [:]
    /// The parameters the client logged in with: what RESET ALL and DISCARD ALL return it to.
    public var startup: [String: String] = [:]
    /// A `SET` sent alone outside a transaction: the client's value once its ReadyForQuery
    /// arrives without an error.
    @inlinable public var pendingSetting: PendingSetting? {
        get { pendingSettingStorage.value }
        set { pendingSettingStorage.value = newValue }
    }
    /// Out of line: set only between such a `SET` and its answer, and inline it made every
    /// session, idle ones included, 40 bytes larger.
    @usableFromInline var pendingSettingStorage = OutOfLine<PendingSetting>()

    public struct PendingSetting: Equatable {
        public var name: String
        public var value: String?
        /// Sent as a Query, or its unnamed statement was executed (a Parse alone sets nothing).
        public var executed: Bool

        public init(name: String, value: String?, executed: Bool) {
            self.name = name
            self.value = value
            self.executed = executed
        }
    }

    public init() {}

    // MARK: Login

    /// Whether PostgreSQL's spelling of every tracked startup parameter is known (then `current`
    /// holds it): `DateStyle=iso` is reported as `ISO, MDY`, `TimeZone=utc` as `UTC`.
    /// `canonical(name, value)`: the spelling learnt from an earlier login, if any.
    public mutating func knowsCanonicalValues(
        template: LoginTemplate, canonical: (_ name: String, _ value: String) -> String?
    ) -> Bool {
        for (name, value) in current where TrackedParameters.isTracked(name) {
            if let index = template.indexByLowercasedName[name], template.parameters[index].value == value {
                continue
            }
            if name == "application_name", value.utf8.count < 64, value.utf8.allSatisfy({ (32...126).contains($0) }) {
                continue  // reported as sent
            }
            guard let spelled = canonical(name, value) else { return false }
            current[name] = spelled
        }
        return true
    }

    /// After a login that used a backend: the values it reports are PostgreSQL's spelling of
    /// what the client asked for. `learn(name, requested, reported)` is told each new spelling.
    public mutating func learnCanonicalValues(
        from reported: [String: String], learn: (_ name: String, _ requested: String, _ reported: String) -> Void
    ) {
        for (reportedName, reportedValue) in reported {
            let name = reportedName.lowercased()
            guard TrackedParameters.isTracked(name), let requested = current[name] else { continue }
            if requested != reportedValue { learn(name, requested, reportedValue) }
            current[name] = reportedValue
        }
    }

    /// Login is complete: `current` (interned by the caller) is also what resets return to.
    public mutating func loggedIn(with values: [String: String]) {
        current = values
        startup = values
    }

    // MARK: A lone SET

    public enum SettingOutcome: Equatable {
        case none
        /// The database accepted it outside a transaction: the client's value from now on (note
        /// it on the backend too).
        case applied(name: String, value: String?)
        /// A BEGIN later in its batch put it in a transaction: its fate is unknown until then, so
        /// the session keeps this backend (pins).
        case pin(name: String)
    }

    /// The backend answered (a burst with `readyForQueryCount` ReadyForQuery messages, the first
    /// with `firstStatus`, or an error).
    public mutating func backendAnswered(
        readyForQueryCount: Int, firstStatus: PGTransactionStatus, sawError: Bool
    ) -> SettingOutcome {
        guard let setting = pendingSetting, sawError || readyForQueryCount > 0 else { return .none }
        pendingSetting = nil
        guard !sawError, setting.executed else { return .none }
        // The first ReadyForQuery answers the SET's own query or batch (a BEGIN pipelined after
        // it in its own Query does not put the SET in a transaction).
        guard firstStatus == .idle else { return .pin(name: setting.name) }
        current[setting.name] = setting.value
        return .applied(name: setting.name, value: setting.value)
    }

    // MARK: Reports

    /// The backend's ParameterStatus messages of tracked parameters: each is the client's value
    /// from now on; the client sees only those that change what it last saw (the backend reports
    /// changes from what *it* last reported, and the proxy sets values behind the client's back:
    /// a resync that rolls back with the client's transaction, say). `loginValue(name)`: what the
    /// client was told at login of a parameter it did not set. Returns `bytes` itself (no copy)
    /// when nothing is dropped.
    public mutating func filterReports(_ bytes: ByteBuffer, loginValue: (String) -> String?) -> ByteBuffer {
        var view = bytes
        var kept = ByteBuffer()
        var runStart = view.readerIndex
        var dropped = false
        while let (type, size) = try? PGFraming.peekFrame(in: view, maxMessageSize: Int(Int32.max)) {
            let frameStart = view.readerIndex
            view.moveReaderIndex(forwardBy: size)
            guard type == PGMessageType.Backend.parameterStatus,
                let body = bytes.getSlice(at: frameStart + 5, length: size - 5),
                let parameter = try? PGParse.parameterStatus(body)
            else { continue }
            let name = parameter.name.lowercased()
            guard TrackedParameters.isTracked(name) else { continue }
            let seen = current[name] ?? loginValue(name)
            current[name] = parameter.value
            if seen == parameter.value {
                if var run = bytes.getSlice(at: runStart, length: frameStart - runStart) { kept.writeBuffer(&run) }
                runStart = view.readerIndex
                dropped = true
            }
        }
        guard dropped else { return bytes }
        if var rest = bytes.getSlice(at: runStart, length: bytes.writerIndex - runStart) { kept.writeBuffer(&rest) }
        return kept
    }
}
