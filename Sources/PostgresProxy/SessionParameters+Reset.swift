import NIOCore
import PostgresWire
import SQLClassifier

/// A RESET ALL, RESET name or DISCARD ALL on its way: the backend's ParameterStatus messages are
/// held back until its ReadyForQuery, when the client gets what PostgreSQL would have reported to
/// it (`SessionParameters.closeResetWindow`).
public struct ResetWindow {
    /// The parameters reset (lowercased names); nil: all of them (RESET ALL, DISCARD ALL).
    public var parameters: Set<String>?
    /// The client's parameters as it last saw them reported.
    public var before: [String: String]
    /// ReadyForQuery messages still due for what was sent before the reset (their
    /// ParameterStatus messages are not the reset's).
    public var syncsBefore: Int
    /// ParameterStatus messages the backend sent meanwhile.
    public var reports = ByteBuffer()
    /// Something failed in the reset's query or batch: nothing was reset.
    public var failed = false
    /// The reset that opened it (what it may release: see ClientSession's `unpin(_:for:)`).
    public var resets = Resets()
    /// DISCARD ALL completed: the parameters went back to the defaults.
    public var discarded = false
    /// Parameters a Query sent after the reset, inside its window, SETs: what the backend
    /// reports of them is the client's (not the reset's) value.
    public var setAfter: Set<String> = []

    public init(parameters: Set<String>?, before: [String: String], syncsBefore: Int, resets: Resets = Resets()) {
        self.parameters = parameters
        self.before = before
        self.syncsBefore = syncsBefore
        self.resets = resets
    }
}

extension SessionParameters {
    /// What the end of a reset window does.
    public struct ResetClosed {
        /// For the client: ParameterStatus messages a direct session would have sent.
        public var reports = ByteBuffer()
        /// Something was reset: the backend's record of what it runs with changes.
        public var reset: Bool = false
        /// The parameters the backend went back to its defaults for (nil: all).
        public var backendDefaults: Set<String>?
        /// Parameters the client set again after the reset: the backend has the client's values.
        public var backendApplied: [(name: String, value: String?)] = []
        /// RESET ALL outside DISCARD ALL: `.unpin` SET's pin (outside a transaction block), or
        /// `.pin` it (inside one, a rollback would restore settings the proxy does not see).
        public var setVariable: SetVariable = .unchanged

        public enum SetVariable: Equatable { case unchanged, unpin, pin }
    }

    /// At the ReadyForQuery after a RESET ALL or DISCARD ALL (or RESET name): PostgreSQL returned
    /// the parameters to the backend's defaults, where the client's are its startup values. The
    /// client gets the ParameterStatus messages a direct session would have sent, and the
    /// backend is to be brought to the client's values before its next message (or at its next
    /// lease). `template`: what the client was told at login.
    public mutating func closeResetWindow(
        _ window: ResetWindow, status: PGTransactionStatus, template: LoginTemplate?
    ) -> ResetClosed {
        var window = window
        var closed = ResetClosed()
        guard window.discarded || !window.failed else {
            // Nothing was reset: the backend's reports are the client's.
            closed.reports = window.reports
            return closed
        }
        closed.reset = true
        // The reports the client gets, by name: PostgreSQL sends them in the order of its
        // settings' names (case-insensitive), whichever statement changed them.
        var reports: [(name: String, value: String)] = []
        // Those set again after the reset keep the values the backend reported (or, unreported,
        // the values the client last saw): `filterReports` recorded them.
        let setAfter = window.setAfter
        if let names = window.parameters {
            for name in names where !setAfter.contains(name) {
                current[name] = startup[name]
            }
            closed.backendDefaults = names.subtracting(setAfter)
            for name in names.intersection(setAfter) { closed.backendApplied.append((name, current[name])) }
            // Reports of other parameters (set in the same query) are the backend's own.
            while let (_, size) = try? PGFraming.peekFrame(in: window.reports, maxMessageSize: Int(Int32.max)),
                let frame = window.reports.readSlice(length: size)
            {
                if let body = frame.getSlice(at: frame.readerIndex + 5, length: size - 5),
                    let parameter = try? PGParse.parameterStatus(body),
                    !names.contains(parameter.name.lowercased()) || setAfter.contains(parameter.name.lowercased())
                {
                    reports.append((parameter.name, parameter.value))
                }
            }
        } else {
            var kept: [String: String] = [:]
            for name in setAfter { kept[name] = current[name] }
            current = startup
            closed.backendDefaults = nil
            for (name, value) in kept {
                current[name] = value
                closed.backendApplied.append((name, value))
            }
            while !setAfter.isEmpty, let (_, size) = try? PGFraming.peekFrame(in: window.reports, maxMessageSize: Int(Int32.max)),
                let frame = window.reports.readSlice(length: size)
            {
                if let body = frame.getSlice(at: frame.readerIndex + 5, length: size - 5),
                    let parameter = try? PGParse.parameterStatus(body), setAfter.contains(parameter.name.lowercased())
                {
                    reports.append((parameter.name, parameter.value))
                }
            }
            if !window.discarded {
                closed.setVariable = status == .idle ? .unpin : .pin
            }
        }
        if let template {
            for parameter in template.parameters {
                let name = parameter.name.lowercased()
                if let names = window.parameters, !names.contains(name) { continue }
                if setAfter.contains(name) { continue }
                let now = startup[name] ?? parameter.value
                if now != (window.before[name] ?? parameter.value) {
                    reports.append((parameter.name, now))
                }
            }
        }
        reports.sort { $0.name.lowercased() < $1.name.lowercased() }
        for report in reports {
            PGEncode.parameterStatus(name: report.name, value: report.value, into: &closed.reports)
        }
        return closed
    }
}
