import DequeModule
import PostgresWire

/// What the backend owes the client for what the session sent it, in order, and which of the
/// backend's messages answer what.
///
/// The session records each message it sends (`sent(_:)`, `syncPointSent()`); for each message of
/// a read burst from the backend it asks `received(_:)` what to do, and before each message (and
/// at the end of the burst) it takes the proxy's own answers that are due there
/// (`popLocalAnswer()`). The tracker never sees the bytes: the session keeps forwarding runs of
/// the original burst and only cuts them where an action says `.drop`. Actions carry the entry
/// they popped inline, so that the session does its own work for it (statements, resets, row
/// types); nothing is allocated per message (an ErrorResponse that skips entries up to a Sync
/// returns them in an array, as PostgreSQL's error path is not the hot one).
///
/// While only simple Queries and Syncs are pending (`isTracking` false), one ReadyForQuery
/// answers each entry and the session forwards a whole burst without looking at it
/// (`forwardedUntracked(readyForQueryCount:)`).
public struct ResponseTracker {
    /// What the backend owes, in order. (A deque: popped at the front for every answer; no
    /// storage until a client sends something.)
    public private(set) var pending: Deque<PendingResponse> = []
    /// Entries of `pending` other than `.query` and `.sync`.
    public private(set) var tracked = 0
    /// Entries of `pending` the proxy answers itself (`PendingResponse.isLocal`): while there are
    /// none, `headIsLocal` is false without copying the head entry (asked before every message
    /// of a tracked burst).
    public private(set) var localCount = 0
    /// Entries of `pending` that carry a `ResetWatch` (`.resetQuery`, `.execute` with one):
    /// while there are none, a CommandComplete needs no look at the head (`headWatch`).
    public private(set) var watched = 0
    /// Sync points (Query, Sync, FunctionCall) sent to the backend and not yet answered by a
    /// ReadyForQuery.
    public private(set) var outstandingSyncs = 0

    public init() {}

    /// What the proxy itself answers, at its place in the response stream.
    public enum LocalAnswer: Equatable, Sendable {
        case parseComplete
        case closeComplete
        /// CopyDone or CopyFail: nothing to send (it has no answer of its own).
        case none
    }

    /// What to do with one backend message.
    public enum Action {
        /// Leave it in the forwarded run. `answered`: the entry it completed (popped), if any.
        case forward(answered: PendingResponse?)
        /// Cut it out of the run: it answers one of the proxy's own messages (or is a notice of
        /// one the client has had). `answered`: the entry it completed (popped), if any.
        case drop(answered: PendingResponse?)
        /// ReadyForQuery, forwarded: it ended `answered` (a Sync, Query or reset Query), popped
        /// with any entries before it that got no answer; nil when nothing was pending.
        case readyForQuery(answered: PendingResponse?)
        /// ErrorResponse (forwarded unless the session rewrites it): see `ErrorOutcome`.
        case error(ErrorOutcome)
        /// CopyInResponse to an Execute: the Syncs sent after the Execute and before CopyDone or
        /// CopyFail are ignored by PostgreSQL and were dropped from `pending` (and
        /// `outstandingSyncs`). `awaitingCopyEnd`: the client has not sent CopyDone or CopyFail
        /// yet, so its Syncs until then are ignored too (and owe nothing).
        case copyIn(awaitingCopyEnd: Bool)
    }

    /// What an ErrorResponse answered.
    public enum ErrorOutcome {
        /// Nothing pending, or a simple Query's (or a lone Sync's) error: ReadyForQuery follows.
        case query
        /// The reset Query at the head failed (it stays until its ReadyForQuery).
        case resetQuery(ResetWatch)
        /// The extended-protocol message at the head failed (`failed`, popped); PostgreSQL skips
        /// every message up to the next Sync: `skipped` (in the order sent) were popped without
        /// an answer, a Query among them no longer counted in `outstandingSyncs`. `syncFollows`:
        /// that Sync was already sent (else the session skips what the client sends until it).
        case failed(PendingResponse, skipped: [PendingResponse], syncFollows: Bool)
    }

    // MARK: Sending

    /// While false, only Queries and Syncs are pending: one ReadyForQuery answers each, and the
    /// responses need not be looked at.
    @inlinable public var isTracking: Bool { tracked > 0 }

    @inlinable public var isEmpty: Bool { pending.isEmpty }

    @inlinable public var head: PendingResponse? { pending.first }

    /// A message went to the backend (or is answered by the proxy, `PendingResponse.isLocal`).
    public mutating func sent(_ entry: __owned PendingResponse) {
        switch entry {
        case .query, .sync: break
        default: tracked += 1
        }
        if entry.isLocal { localCount += 1 }
        if entry.isWatched { watched += 1 }
        pending.append(entry)
    }

    /// A sync point (Query, Sync, FunctionCall, or the Sync sent instead of a Query) went to the
    /// backend. Returns true when it is the only one outstanding (the response time starts).
    public mutating func syncPointSent() -> Bool {
        outstandingSyncs += 1
        return outstandingSyncs == 1
    }

    // MARK: Receiving

    /// A burst forwarded without looking at it (`isTracking` false): each of its ReadyForQuery
    /// messages answers one entry.
    public mutating func forwardedUntracked(readyForQueryCount: Int) {
        let count = min(readyForQueryCount, pending.count)
        if localCount > 0 {
            for entry in pending.prefix(count) where entry.isLocal { localCount -= 1 }
        }
        pending.removeFirst(count)
    }

    /// The burst held `count` ReadyForQuery messages: as many sync points are answered.
    public mutating func syncPointsAnswered(_ count: Int) {
        outstandingSyncs = max(0, outstandingSyncs - count)
    }

    /// The proxy's answers are due: everything the backend owed before them has been forwarded.
    @inlinable public var headIsLocal: Bool { localCount > 0 && pending.first?.isLocal == true }

    /// The next of the proxy's answers due now (the head entry is answered locally), popped; nil
    /// when the head is the backend's to answer.
    public mutating func popLocalAnswer() -> LocalAnswer? {
        guard localCount > 0, let head = pending.first, head.isLocal else { return nil }
        switch pop() {
        case .localParseComplete: return .parseComplete
        case .localCloseComplete: return .closeComplete
        default: return LocalAnswer.none
        }
    }

    /// One backend message of type `type`, while `isTracking` (or a reset is watched). The
    /// session answers due local entries first (`popLocalAnswer()`).
    public mutating func received(_ type: UInt8) -> Action {
        switch type {
        case PGMessageType.Backend.noticeResponse:
            if case .injectedParse(_, _, _, quiet: true) = pending.first {
                // The proxy's Parse of a statement the client has had analysed: its notices
                // were the client's already.
                return .drop(answered: nil)
            }
            return .forward(answered: nil)  // asynchronous: not an answer to anything
        case PGMessageType.Backend.notificationResponse, PGMessageType.Backend.parameterStatus,
            PGMessageType.Backend.dataRow:
            // A DataRow completes no entry, whatever the head is (`answer`): the commonest
            // message of a result answered without copying the head entry.
            return .forward(answered: nil)
        case PGMessageType.Backend.errorResponse:
            return .error(errorReceived())
        case PGMessageType.Backend.readyForQuery:
            // Pops through the Sync (or Query) it answers.
            while !pending.isEmpty {
                let entry = pop()
                switch entry {
                case .sync, .query, .resetQuery: return .readyForQuery(answered: entry)
                default: continue
                }
            }
            return .readyForQuery(answered: nil)
        case PGMessageType.Backend.copyInResponse:
            guard case .execute = pending.first else { return .forward(answered: nil) }
            return .copyIn(awaitingCopyEnd: enteredCopyIn())
        default:
            return answer(type)
        }
    }

    /// The head entry and `type`: whether it completes it, and whether it is the proxy's own.
    private mutating func answer(_ type: UInt8) -> Action {
        guard !pending.isEmpty else { return .forward(answered: nil) }
        // Looked at in place (the deque's modify access moves the entry out and back): a copy
        // (`pending.first`) retained and released its strings for every BindComplete,
        // CommandComplete... of a tracked burst.
        switch Self.headAnswer(type, &pending[pending.startIndex]) {
        case .inside: return .forward(answered: nil)
        case .forward: return .forward(answered: pop())
        case .drop: return .drop(answered: pop())
        case .dropInside: return .drop(answered: nil)
        }
    }

    /// What a backend message of `type` does to the head entry (`answer`).
    private enum HeadAnswer {
        /// Not its answer (or not its last message): forwarded, the entry stays.
        case inside
        /// Its answer, forwarded; the entry is popped.
        case forward
        /// Its answer, the proxy's own: cut out, the entry popped.
        case drop
        /// Part of the answer to the proxy's own question, cut out; the entry stays.
        case dropInside
    }

    private static func headAnswer(_ type: UInt8, _ head: inout PendingResponse) -> HeadAnswer {
        switch head {
        case .query, .sync, .resetQuery:
            return .inside  // inside a simple query's results
        case .parse, .unnamedParse, .duplicateParse:
            return type == PGMessageType.Backend.parseComplete ? .forward : .inside
        case .injectedParse, .injectedPlaceholder:
            return type == PGMessageType.Backend.parseComplete ? .drop : .inside
        case .injectedClose:
            return type == PGMessageType.Backend.closeComplete ? .drop : .inside
        case .bind:
            return type == PGMessageType.Backend.bindComplete ? .forward : .inside
        case .describeStatement, .describePortal:
            return type == PGMessageType.Backend.rowDescription || type == PGMessageType.Backend.noData
                ? .forward : .inside
        case .shapeDescribe:
            switch type {
            case PGMessageType.Backend.parameterDescription:
                return .dropInside  // the proxy's own question
            case PGMessageType.Backend.rowDescription, PGMessageType.Backend.noData:
                return .drop
            default:
                return .inside
            }
        case .changedResultType:
            return .inside  // its ErrorResponse is handled there
        case .execute:
            return type == PGMessageType.Backend.commandComplete || type == PGMessageType.Backend.emptyQueryResponse
                || type == PGMessageType.Backend.portalSuspended
                ? .forward : .inside
        case .close:
            return type == PGMessageType.Backend.closeComplete ? .forward : .inside
        case .localParseComplete, .localCloseComplete, .copyEnd:
            return .inside  // answered before each message (`popLocalAnswer`)
        }
    }

    /// An ErrorResponse: in the extended protocol it answers the head entry, and PostgreSQL then
    /// skips every message up to Sync, so their entries go too.
    private mutating func errorReceived() -> ErrorOutcome {
        guard let head = pending.first else { return .query }
        switch head {
        case .query, .sync:
            return .query  // a simple query's error: ReadyForQuery follows
        case .resetQuery(let watch):
            return .resetQuery(watch)
        default:
            break
        }
        let failed = pop()
        let syncFollows = pending.contains(where: { if case .sync = $0 { return true } else { return false } })
        var skipped: [PendingResponse] = []
        while let next = pending.first {
            if case .sync = next { break }
            let entry = pop()
            switch entry {
            case .query, .resetQuery:
                // PostgreSQL skips everything up to Sync, a simple Query (or FunctionCall)
                // included: no ReadyForQuery will answer it.
                outstandingSyncs = max(0, outstandingSyncs - 1)
            default:
                break
            }
            skipped.append(entry)
        }
        return .failed(failed, skipped: skipped, syncFollows: syncFollows)
    }

    /// CopyInResponse to the Execute at the head: PostgreSQL reads the copy data now and ignores
    /// Sync (and Flush) until CopyDone or CopyFail. Syncs the client sent before those get no
    /// ReadyForQuery (pg8000 sends Parse, Bind, Execute and Sync at once, then the data).
    /// Returns true when CopyDone or CopyFail has not been sent yet.
    private mutating func enteredCopyIn() -> Bool {
        var index = 1
        while index < pending.count {
            switch pending[index] {
            case .sync:
                pending.remove(at: index)
                outstandingSyncs = max(0, outstandingSyncs - 1)
            case .copyEnd:
                pending.remove(at: index)
                tracked -= 1
                localCount -= 1  // `.copyEnd` is answered by the proxy (`isLocal`)
                return false
            default:
                index += 1
            }
        }
        return true
    }

    private mutating func pop() -> PendingResponse {
        let entry = pending.removeFirst()
        switch entry {
        case .query, .sync: break
        default: tracked -= 1
        }
        if entry.isLocal { localCount -= 1 }
        if entry.isWatched { watched -= 1 }
        return entry
    }

    // MARK: Questions the session asks

    /// Pending Syncs, Queries and reset Queries: the ReadyForQuery messages due.
    public var syncPointsPending: Int {
        var count = 0
        for entry in pending {
            switch entry {
            case .query, .sync, .resetQuery: count += 1
            default: break
            }
        }
        return count
    }

    /// A Sync is pending (a failure now skips only up to it).
    public var syncPending: Bool {
        pending.contains(where: { if case .sync = $0 { return true } else { return false } })
    }

    /// A batch that has ended (by a Sync or Query) holds an uncertain entry
    /// (`PendingResponse.isUncertain`): its fate changes what the proxy knows of the client's
    /// statements.
    public var uncertainBatchPending: Bool {
        var uncertain = false
        for entry in pending {
            if entry.isUncertain { uncertain = true }
            switch entry {
            case .sync, .query, .resetQuery:
                if uncertain { return true }
            default:
                break
            }
        }
        return false
    }

    // MARK: Backend gone

    /// The backend was given back: nothing is owed any more (`outstandingSyncs` is the
    /// session's to settle).
    public mutating func removeAllPending() {
        pending.removeAll(keepingCapacity: true)
        tracked = 0
        localCount = 0
        watched = 0
    }

    /// The backend was lost: nothing is owed, no sync point outstanding.
    public mutating func reset() {
        removeAllPending()
        outstandingSyncs = 0
    }
}
