import NIOCore
import PostgresWire

// The pool's and the owner's commands, the health check, and the end of the connection.
extension BackendStateMachine {
    /// Hands the backend to a client session: brings its session parameters to `parameters`
    /// (lowercased name → value), closing the statements `takeStale` returns (asked only when
    /// the backend is idle). `.ownerReady` at once when nothing differs; else `.write` and
    /// `.ownerReady` (or `.ownerFailedClosing`) at its ReadyForQuery.
    ///
    /// `fromDefaults`: the values are as a client wrote them in its startup packet, not yet in
    /// PostgreSQL's spelling (the login probe). Some are partial (`DateStyle=SQL` keeps the
    /// current day/month order), and PostgreSQL applies a startup packet's values to the
    /// session's defaults, not to whatever the previous client left: so each goes back to its
    /// default first.
    public mutating func lease(
        parameters: [String: String], fromDefaults: Bool, takingStale takeStale: () -> [String]
    ) -> Action {
        switch state {
        case .idle:
            break
        case .closed:
            return .ownerFailed(.connection("the database connection closed"))
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .setup, .leased, .preparing, .resetting, .checking,
            .modifying:
            return .ownerFailedReleasing(.connection("the database connection closed"))
        }
        // Usually the parameters already match (most clients send the same startup packet).
        let sql = appliedParameters == parameters
            ? nil
            : ParameterSync.parameterSyncSQL(
                from: appliedParameters, to: parameters, baseline: baselineParameters, fromDefaults: fromDefaults)
        appliedParameters = parameters
        let stale = takeStale()
        guard sql != nil || !stale.isEmpty else {
            state = .leased
            return .ownerReady
        }
        // Answered by one ReadyForQuery: Close of statements no longer wanted (a Close of a name
        // the server no longer has is not an error, where DEALLOCATE would be), then the
        // parameter SQL (or a Sync).
        state = .preparing(failure: nil, fromDefaults: fromDefaults)
        var out = configuration.allocator.buffer(capacity: (sql?.utf8.count ?? 0) + 8 + stale.count * 40)
        for name in stale { PGEncode.close(.statement, name: name, into: &out) }
        if let sql {
            PGEncode.query(sql, into: &out)
        } else {
            PGEncode.sync(into: &out)
        }
        return .write(out)
    }

    /// While leased, between two of its owner's transactions or statements: brings the session
    /// parameters to `parameters` again (after a RESET ALL the owner keeps the backend).
    public mutating func reapply(parameters: [String: String]) -> Action {
        guard case .leased = state else { return .ownerFailed(.connection("the database connection closed")) }
        let sql = appliedParameters == parameters
            ? nil
            : ParameterSync.parameterSyncStatement(from: appliedParameters, to: parameters, baseline: baselineParameters)
        appliedParameters = parameters
        guard let sql else { return .ownerReady }
        // Through the extended protocol, under names of the proxy's own: a simple Query would
        // destroy the client's unnamed statement and portal (it may be inside a transaction).
        state = .preparing(failure: nil, fromDefaults: false)
        let name = ParameterSync.resyncName
        var out = configuration.allocator.buffer(capacity: sql.utf8.count + 128)
        PGEncode.parse(statementName: name, query: sql, into: &out)
        PGEncode.bind(portalName: name, statementName: name, parameters: [], into: &out)
        PGEncode.execute(portalName: name, into: &out)
        PGEncode.close(.portal, name: name, into: &out)
        PGEncode.close(.statement, name: name, into: &out)
        PGEncode.sync(into: &out)
        return .write(out)
    }

    /// The owner is done with the backend: back to the pool if `reusable`, else closed.
    public mutating func released(reusable: Bool) -> Action {
        switch state {
        case .leased, .preparing:
            if reusable {
                state = .idle
                return .returnToPool
            }
            state = .closed
            return .discard
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .setup, .idle, .resetting, .checking, .closed,
            .modifying:
            return .none
        }
    }

    /// The client left inside a transaction: roll it back; the backend returns to the pool at
    /// an idle ReadyForQuery (`.returnToPool`), else it is discarded.
    public mutating func rollbackRequested() -> Action {
        guard case .leased = state else { return .none }
        state = .resetting
        var out = configuration.allocator.buffer(capacity: 16)
        PGEncode.query("ROLLBACK", into: &out)
        return .write(out)
    }

    /// The health checker asks whether the database is a standby (only on its own connections,
    /// which are never pooled).
    public mutating func checkRequested() -> Action {
        guard case .idle = state else {
            return .completeCheck(.failure(.connection("the health-check connection is not ready")))
        }
        state = .checking(inRecovery: nil, failure: nil)
        var out = configuration.allocator.buffer(capacity: 40)
        PGEncode.query("SELECT pg_catalog.pg_is_in_recovery()", into: &out)
        return .write(out)
    }

    /// Close politely: Terminate, then close. Nobody is told now (the caller knows); the pool is
    /// told when the connection has closed (`channelInactive`), as it keeps the slot until then.
    public mutating func closeRequested() -> Action {
        state = .closed
        var out = configuration.allocator.buffer(capacity: 5)
        PGEncode.terminate(into: &out)
        return .terminate(out)
    }

    /// An error on the channel; the handler closes it. A TLS error is kept for the setup error.
    public mutating func errorCaught(tlsFailure description: String?) -> Action {
        if let description {
            tlsFailure = "TLS with the database failed (target_group.tls.mode \(configuration.tlsMode)): \(description)"
        }
        return .close
    }

    /// The connection closed: who must hear of it depends on who had it. The pool hears of every
    /// backend it got (once): it keeps a backend it closed (or that was released as not
    /// reusable, `.closed` here) in its cap until then.
    public mutating func channelInactive() -> Action {
        let previous = state
        state = .closed
        let toldPool = poolAwaitsClose
        poolAwaitsClose = false
        switch previous {
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .setup:
            return .failSetup(.connection(tlsFailure ?? "the database closed the connection during login"))
        case .leased, .preparing:
            return .ownerAndPoolLost
        case .idle, .resetting:
            return .poolLost
        case .checking:
            return .completeCheck(.failure(.connection("the database closed the health-check connection")))
        case .closed, .modifying:
            return toldPool ? .poolLost : .none
        }
    }

    // MARK: Parameter bookkeeping (no action)

    /// While leased, the database reported a parameter (forwarded to the owner as it is): the
    /// backend runs with it, and so does its client if the parameter is tracked. Returns whether
    /// it is tracked (the owner then filters what the client sees).
    public mutating func parameterReportedWhileLeased(name: String, value: String) -> Bool {
        serverParameters[name] = value
        let lowercased = name.lowercased()
        guard configuration.isTracked(lowercased) else { return false }
        appliedParameters[lowercased] = value
        return true
    }

    /// The leasing session set `name` (lowercased) on this backend with SQL; nil: RESET.
    public mutating func noteApplied(name: String, value: String?) {
        appliedParameters[name] = value
    }

    /// The leasing session ran `RESET ALL`, `DISCARD ALL` or `RESET name`: the backend now runs
    /// with its login defaults there, without what init_query set.
    /// `names`: the parameters reset (`RESET name`); nil: all of them.
    public mutating func noteParametersReset(_ names: Set<String>?) {
        guard let names else {
            appliedParameters = [:]
            for name in baselineParameters.keys { appliedParameters[name] = ParameterSync.lostBaseline }
            return
        }
        for name in names {
            // Back to the login default: what "not applied" means, unless init_query set it.
            appliedParameters[name] = baselineParameters[name] != nil ? ParameterSync.lostBaseline : nil
        }
    }
}
