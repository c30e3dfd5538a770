import NIOCore
import PostgresProxy
import PostgresWire
import Testing

/// The response tracker event by event: what the session sent, then each backend message of a
/// burst, and what the tracker says to do with it.
@Suite struct ResponseTrackerTests {
    typealias B = PGMessageType.Backend

    // MARK: Simple Query

    @Test func aSimpleQueryIsAnsweredByItsReadyForQuery() {
        let tracker = Harness()
        tracker.sent(.query)
        #expect(tracker.syncPointSent())  // the first outstanding: the response time starts
        #expect(!tracker.isTracking)
        #expect(tracker.on(B.rowDescription) == "forward")
        #expect(tracker.on(B.dataRow) == "forward")
        #expect(tracker.on(B.commandComplete) == "forward")
        #expect(tracker.outstandingSyncs == 1)
        #expect(tracker.on(B.readyForQuery) == "ready query")
        #expect(tracker.isEmpty)
        tracker.syncPointsAnswered(1)
        #expect(tracker.outstandingSyncs == 0)
    }

    @Test func untrackedBurstsPopOneEntryPerReadyForQuery() {
        let tracker = Harness()
        tracker.sent(.query)
        #expect(tracker.syncPointSent())
        tracker.sent(.query)
        #expect(!tracker.syncPointSent())
        tracker.sent(.sync)
        #expect(!tracker.syncPointSent())
        #expect(!tracker.isTracking)
        tracker.forwardedUntracked(readyForQueryCount: 2)
        tracker.syncPointsAnswered(2)
        #expect(tracker.pending.count == 1)
        #expect(tracker.outstandingSyncs == 1)
        tracker.forwardedUntracked(readyForQueryCount: 5)  // never more than pending
        tracker.syncPointsAnswered(5)
        #expect(tracker.isEmpty && tracker.outstandingSyncs == 0)
    }

    @Test func aSimpleQueryErrorWaitsForItsReadyForQuery() {
        let tracker = Harness()
        tracker.sent(.query)
        _ = tracker.syncPointSent()
        #expect(tracker.on(B.errorResponse) == "error query")
        #expect(tracker.pending.count == 1)
        #expect(tracker.on(B.readyForQuery) == "ready query")
        let empty = Harness()
        #expect(empty.on(B.errorResponse) == "error query")
    }

    // MARK: Extended protocol

    @Test func aPipelinedBatchDropsTheAnswersToTheProxysOwnMessages() {
        // Close + Parse + Describe injected before the client's Bind of a statement the backend
        // lacked, then the client's Bind, Describe (portal), Execute, Sync.
        let tracker = Harness()
        tracker.sent(.injectedClose())
        tracker.sent(.injectedParse(client: "s1", key: "k", serverName: "concierge_k"))
        tracker.sent(shapeDescribe(client: "s1"))
        tracker.sent(.bind(serverName: "concierge_k", client: "s1"))
        tracker.sent(.describePortal)
        tracker.sent(.execute(serverName: "concierge_k", reset: nil))
        tracker.sent(.sync)
        #expect(tracker.syncPointSent())
        #expect(tracker.isTracking && tracker.tracked == 6)
        #expect(tracker.popLocalAnswer() == nil)
        #expect(tracker.on(B.closeComplete) == "drop injectedClose")
        #expect(tracker.on(B.parseComplete) == "drop injectedParse")
        #expect(tracker.on(B.parameterDescription) == "drop")
        #expect(tracker.on(B.rowDescription) == "drop shapeDescribe")
        #expect(tracker.on(B.bindComplete) == "forward bind")
        #expect(tracker.on(B.rowDescription) == "forward describePortal")
        #expect(tracker.on(B.dataRow) == "forward")
        #expect(tracker.on(B.dataRow) == "forward")
        #expect(tracker.on(B.commandComplete) == "forward execute")
        #expect(tracker.tracked == 0)
        #expect(tracker.on(B.readyForQuery) == "ready sync")
        #expect(tracker.isEmpty)
    }

    @Test func aShapeDescribeAnsweredWithNoDataIsDroppedToo() {
        let tracker = Harness()
        tracker.sent(.parse(client: "s", key: "k", serverName: "concierge_k"))
        tracker.sent(shapeDescribe(client: "s"))
        tracker.sent(.describeStatement)
        tracker.sent(.sync)
        #expect(tracker.on(B.parseComplete) == "forward parse")
        #expect(tracker.on(B.parameterDescription) == "drop")
        #expect(tracker.on(B.noData) == "drop shapeDescribe")
        // The client's own Describe: both its answers are forwarded.
        #expect(tracker.on(B.parameterDescription) == "forward")
        #expect(tracker.on(B.noData) == "forward describeStatement")
        #expect(tracker.on(B.readyForQuery) == "ready sync")
    }

    @Test func thePlaceholdersParseCompleteIsDroppedAndADuplicateParsesIsForwarded() {
        let tracker = Harness()
        tracker.sent(.injectedPlaceholder)
        tracker.sent(.duplicateParse(serverName: "concierge_0", client: "s"))
        tracker.sent(.unnamedParse(UnnamedBefore(statement: nil, onBackend: true, generation: 1)))
        tracker.sent(.close())
        #expect(tracker.on(B.parseComplete) == "drop injectedPlaceholder")
        #expect(tracker.on(B.parseComplete) == "forward duplicateParse")
        #expect(tracker.on(B.parseComplete) == "forward unnamedParse")
        #expect(tracker.on(B.closeComplete) == "forward close")
    }

    @Test func anExecuteEndsAtCommandCompleteEmptyQueryOrPortalSuspended() {
        let tracker = Harness()
        tracker.sent(.execute(serverName: nil, reset: nil))
        tracker.sent(.execute(serverName: nil, reset: nil))
        tracker.sent(.execute(serverName: nil, reset: nil))
        #expect(tracker.on(B.dataRow) == "forward")
        #expect(tracker.on(B.portalSuspended) == "forward execute")
        #expect(tracker.on(B.emptyQueryResponse) == "forward execute")
        #expect(tracker.on(B.commandComplete) == "forward execute")
        #expect(tracker.isEmpty)
    }

    // MARK: The proxy's own answers

    @Test func localAnswersComeWhereTheBackendWouldHaveAnswered() {
        // Parse (forwarded), Parse of a statement the backend has (answered by the proxy),
        // Bind, Close of a named statement (answered by the proxy), Sync.
        let tracker = Harness()
        tracker.sent(.parse(client: "a", key: "ka", serverName: "concierge_ka"))
        tracker.sent(.localParseComplete(client: "b"))
        tracker.sent(.bind(serverName: "concierge_kb", client: "b"))
        tracker.sent(.localCloseComplete(client: "c", removed: nil))
        tracker.sent(.sync)
        // What the client sees, in the order the session writes it.
        let seen = tracker.relay([B.parseComplete, B.bindComplete, B.readyForQuery])
        #expect(seen == "1 (1) 2 (3) Z")
        #expect(tracker.isEmpty && tracker.tracked == 0)
    }

    @Test func aLocalAnswerAtTheHeadIsDueAtOnce() {
        let tracker = Harness()
        tracker.sent(.localParseComplete(client: "b"))
        #expect(tracker.headIsLocal)
        #expect(tracker.popLocalAnswer() == .parseComplete)
        #expect(tracker.popLocalAnswer() == nil)
        #expect(tracker.isEmpty && !tracker.isTracking)
    }

    @Test func localAnswersAreCountedSoThatNoneDueIsKnownWithoutLookingAtTheHead() {
        let tracker = Harness()
        tracker.sent(.bind(serverName: "concierge_ka", client: "a"))
        tracker.sent(.execute(serverName: "concierge_ka", reset: nil))
        tracker.sent(.localParseComplete(client: "b"))
        tracker.sent(.sync)
        #expect(tracker.localCount == 1 && !tracker.headIsLocal)
        #expect(tracker.on(B.bindComplete) == "forward bind")
        // A DataRow answers no entry, whatever the head.
        #expect(tracker.on(B.dataRow) == "forward")
        #expect(tracker.on(B.commandComplete) == "forward execute")
        #expect(tracker.headIsLocal)
        #expect(tracker.popLocalAnswer() == .parseComplete)
        #expect(tracker.localCount == 0 && !tracker.headIsLocal)
        // Dropped with the rest when the backend goes.
        tracker.sent(.localCloseComplete(client: "c", removed: nil))
        tracker.removeAllPending()
        #expect(tracker.localCount == 0 && tracker.popLocalAnswer() == nil)
    }

    @Test func aDataRowCompletesNoEntry() {
        let heads: [PendingResponse] = [
            .describeStatement, .describePortal, .bind(serverName: nil), .close(),
            .parse(client: "a", key: "ka", serverName: "concierge_ka"), .execute(serverName: nil, reset: nil),
            .injectedClose(), .changedResultType,
        ]
        for head in heads {
            let tracker = Harness()
            tracker.sent(head)
            #expect(tracker.on(B.dataRow) == "forward")
            #expect(tracker.tracked == 1)
        }
    }

    // MARK: Errors

    @Test func anErrorInTheMiddleOfABatchSkipsToItsSync() {
        let tracker = Harness()
        tracker.sent(.parse(client: "a", key: "ka", serverName: "concierge_ka"))
        tracker.sent(.bind(serverName: "concierge_ka", client: "a"))
        tracker.sent(.describePortal)
        tracker.sent(.execute(serverName: "concierge_ka", reset: nil))
        tracker.sent(.localCloseComplete(client: "c", removed: nil))
        tracker.sent(.sync)
        _ = tracker.syncPointSent()
        // The next batch, pipelined.
        tracker.sent(.parse(client: "d", key: "kd", serverName: "concierge_kd"))
        tracker.sent(.sync)
        _ = tracker.syncPointSent()
        #expect(tracker.on(B.parseComplete) == "forward parse")
        #expect(tracker.on(B.errorResponse)
            == "error failed bind skipped [describePortal execute localCloseComplete] syncFollows")
        #expect(tracker.popLocalAnswer() == nil)  // a skipped Close is not answered
        #expect(tracker.on(B.readyForQuery) == "ready sync")
        #expect(tracker.outstandingSyncs == 2)  // counted per burst: `syncPointsAnswered`
        #expect(tracker.on(B.parseComplete) == "forward parse")
        #expect(tracker.on(B.readyForQuery) == "ready sync")
        tracker.syncPointsAnswered(2)
        #expect(tracker.isEmpty && tracker.tracked == 0 && tracker.outstandingSyncs == 0)
    }

    @Test func anErrorBeforeTheSyncIsSentSkipsEverythingAndAQueryWithIt() {
        // Bind, Execute, then a simple Query without a Sync between: PostgreSQL skips the Query
        // too, and no ReadyForQuery answers it.
        let tracker = Harness()
        tracker.sent(.bind(serverName: nil))
        tracker.sent(.execute(serverName: nil, reset: nil))
        tracker.sent(.query)
        #expect(tracker.syncPointSent())
        #expect(!tracker.syncPending)
        #expect(tracker.on(B.errorResponse) == "error failed bind skipped [execute query] noSync")
        #expect(tracker.isEmpty)
        #expect(tracker.outstandingSyncs == 0)
    }

    @Test func aResetQuerysErrorLeavesItToItsReadyForQuery() {
        let tracker = Harness()
        tracker.sent(.resetQuery(ResetWatch(resets: Resets())))
        _ = tracker.syncPointSent()
        #expect(tracker.isTracking)
        #expect(tracker.on(B.commandComplete) == "forward")
        #expect(tracker.on(B.errorResponse) == "error resetQuery")
        #expect(tracker.on(B.readyForQuery) == "ready resetQuery")
        #expect(!tracker.isTracking)
    }

    @Test func aReadyForQueryPopsUnansweredEntriesBeforeItsSync() {
        let tracker = Harness()
        tracker.sent(.changedResultType)
        tracker.sent(.sync)
        tracker.sent(.query)
        #expect(tracker.on(B.readyForQuery) == "ready sync")
        #expect(tracker.tracked == 0 && tracker.pending.count == 1)
        #expect(tracker.on(B.readyForQuery) == "ready query")
        #expect(tracker.on(B.readyForQuery) == "ready")
    }

    // MARK: Several Syncs

    @Test func severalSyncsInOneBurst() {
        let tracker = Harness()
        tracker.sent(.parse(client: nil, key: "k", serverName: "concierge_k"))
        tracker.sent(.sync)
        #expect(tracker.syncPointSent())
        tracker.sent(.bind(serverName: "concierge_k"))
        tracker.sent(.execute(serverName: "concierge_k", reset: nil))
        tracker.sent(.sync)
        #expect(!tracker.syncPointSent())
        tracker.sent(.query)
        #expect(!tracker.syncPointSent())
        #expect(tracker.syncPointsPending == 3)
        let seen = tracker.relay([
            B.parseComplete, B.readyForQuery, B.bindComplete, B.dataRow, B.commandComplete, B.readyForQuery,
            B.rowDescription, B.dataRow, B.commandComplete, B.readyForQuery,
        ])
        #expect(seen == "1 Z 2 D C Z T D C Z")
        tracker.syncPointsAnswered(3)
        #expect(tracker.isEmpty && tracker.outstandingSyncs == 0)
    }

    @Test func anEndedBatchWithAnUncertainEntryIsReported() {
        let tracker = Harness()
        tracker.sent(.parse(client: "a", key: "k", serverName: "concierge_k"))
        #expect(!tracker.uncertainBatchPending)  // not ended yet
        tracker.sent(.sync)
        #expect(tracker.uncertainBatchPending)
        let certain = Harness()
        certain.sent(.bind(serverName: nil))
        certain.sent(.sync)
        #expect(!certain.uncertainBatchPending)
    }

    // MARK: COPY

    @Test func copyInIgnoresTheSyncsSentBeforeCopyDone() {
        // pg8000: Parse, Bind, Execute and Sync at once, then the data; CopyDone not sent yet.
        let tracker = Harness()
        tracker.sent(.parse(client: nil, key: "", serverName: ""))
        tracker.sent(.bind(serverName: nil))
        tracker.sent(.execute(serverName: nil, reset: nil))
        tracker.sent(.sync)
        _ = tracker.syncPointSent()
        #expect(tracker.on(B.parseComplete) == "forward parse")
        #expect(tracker.on(B.bindComplete) == "forward bind")
        #expect(tracker.on(B.copyInResponse) == "copyIn awaitingCopyEnd")
        #expect(tracker.outstandingSyncs == 0 && tracker.pending.count == 1)
        #expect(tracker.on(B.commandComplete) == "forward execute")
        #expect(tracker.isEmpty)
    }

    @Test func copyInWithCopyDoneAlreadySentDropsItsSyncsUpToIt() {
        let tracker = Harness()
        tracker.sent(.execute(serverName: nil, reset: nil))
        tracker.sent(.sync)
        _ = tracker.syncPointSent()
        tracker.sent(.copyEnd)
        tracker.sent(.sync)
        _ = tracker.syncPointSent()
        #expect(tracker.on(B.copyInResponse) == "copyIn")
        #expect(tracker.outstandingSyncs == 1)
        #expect(tracker.pending.count == 2 && tracker.tracked == 1)
        #expect(tracker.on(B.commandComplete) == "forward execute")
        #expect(tracker.on(B.readyForQuery) == "ready sync")
    }

    @Test func copyEndAtTheHeadIsAnsweredWithNothing() {
        let tracker = Harness()
        tracker.sent(.bind(serverName: nil))
        tracker.sent(.copyEnd)
        #expect(tracker.on(B.bindComplete) == "forward bind")
        #expect(tracker.popLocalAnswer() == ResponseTracker.LocalAnswer.none)
        #expect(tracker.isEmpty && !tracker.isTracking)
    }

    @Test func aCopyInResponseToASimpleQueryChangesNothing() {
        let tracker = Harness()
        tracker.sent(.bind(serverName: nil))
        tracker.sent(.query)
        #expect(tracker.on(B.copyInResponse) == "forward")
        #expect(tracker.pending.count == 2)
    }

    // MARK: Asynchronous messages

    @Test func noticesAndNotificationsAnswerNothing() {
        let tracker = Harness()
        tracker.sent(.parse(client: "a", key: "k", serverName: "concierge_k"))
        tracker.sent(.bind(serverName: nil))
        tracker.sent(.sync)
        for type in [B.noticeResponse, B.notificationResponse, B.parameterStatus] {
            #expect(tracker.on(type) == "forward")
        }
        #expect(tracker.pending.count == 3)
        let seen = tracker.relay([B.noticeResponse, B.parseComplete, B.notificationResponse, B.bindComplete, B.readyForQuery])
        #expect(seen == "N 1 A 2 Z")
    }

    @Test func theNoticesOfTheProxysQuietParseAreDropped() {
        let tracker = Harness()
        tracker.sent(.injectedParse(client: "a", key: "k", serverName: "concierge_k", quiet: true))
        #expect(tracker.on(B.noticeResponse) == "drop")
        #expect(tracker.on(B.notificationResponse) == "forward")
        #expect(tracker.pending.count == 1)
        #expect(tracker.on(B.parseComplete) == "drop injectedParse")
        // A first analysis for the client: its notices are the client's.
        tracker.sent(.injectedParse(client: "b", key: "k2", serverName: "concierge_k2", quiet: false))
        #expect(tracker.on(B.noticeResponse) == "forward")
    }

    @Test func theBackendGoneClearsWhatIsOwed() {
        let tracker = Harness()
        tracker.sent(.bind(serverName: nil))
        tracker.sent(.sync)
        _ = tracker.syncPointSent()
        tracker.removeAllPending()
        #expect(tracker.isEmpty && !tracker.isTracking && tracker.outstandingSyncs == 1)
        tracker.sent(.query)
        tracker.reset()
        #expect(tracker.isEmpty && tracker.outstandingSyncs == 0)
    }

    // MARK: Invariants

    @Test func theCountersFollowTheQueueWhateverTheOrder() {
        // Random messages sent and received (a fixed seed): `tracked` is always the number of
        // entries other than Query and Sync, and no counter goes below zero.
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next(_ bound: Int) -> Int {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((seed >> 33) % UInt64(bound))
        }
        let entries: [PendingResponse] = [
            .query, .sync, .parse(client: "a", key: "k", serverName: "s"), .injectedClose(),
            .injectedParse(client: nil, key: "k", serverName: "s"), shapeDescribe(client: nil),
            .bind(serverName: nil), .describePortal, .describeStatement, .execute(serverName: nil, reset: nil),
            .localParseComplete(client: "b"), .localCloseComplete(client: "c", removed: nil), .copyEnd,
            .resetQuery(ResetWatch(resets: Resets())), .changedResultType, .close(),
        ]
        let types: [UInt8] = [
            B.parseComplete, B.bindComplete, B.closeComplete, B.noData, B.rowDescription, B.parameterDescription,
            B.dataRow, B.commandComplete, B.emptyQueryResponse, B.portalSuspended, B.errorResponse, B.readyForQuery,
            B.copyInResponse, B.noticeResponse, B.notificationResponse, B.parameterStatus,
        ]
        var tracker = ResponseTracker()
        for _ in 0..<20_000 {
            switch next(3) {
            case 0:
                let entry = entries[next(entries.count)]
                tracker.sent(entry)
                switch entry {
                case .query, .sync, .resetQuery: _ = tracker.syncPointSent()
                default: break
                }
            case 1:
                _ = tracker.popLocalAnswer()
                _ = tracker.received(types[next(types.count)])
            default:
                if next(50) == 0 { tracker.removeAllPending() }
                if next(8) == 0 { tracker.syncPointsAnswered(1) }
            }
            let untracked = tracker.pending.filter {
                switch $0 {
                case .query, .sync: return true
                default: return false
                }
            }.count
            #expect(tracker.tracked == tracker.pending.count - untracked)
            #expect(tracker.localCount == tracker.pending.filter(\.isLocal).count)
            #expect(tracker.outstandingSyncs >= 0)
        }
    }

    private func shapeDescribe(client: String?) -> PendingResponse {
        .shapeDescribe(key: "k", serverName: "concierge_k", parsedAt: 1, client: client, clientParsedAt: 1, waiting: false)
    }
}

/// The tracker under test, behind a reference so that `#expect` can drive it.
@dynamicMemberLookup
private final class Harness {
    typealias B = PGMessageType.Backend
    var tracker = ResponseTracker()

    subscript<T>(dynamicMember path: KeyPath<ResponseTracker, T>) -> T { tracker[keyPath: path] }

    func sent(_ entry: PendingResponse) { tracker.sent(entry) }
    func syncPointSent() -> Bool { tracker.syncPointSent() }
    func syncPointsAnswered(_ count: Int) { tracker.syncPointsAnswered(count) }
    func forwardedUntracked(readyForQueryCount: Int) { tracker.forwardedUntracked(readyForQueryCount: readyForQueryCount) }
    func popLocalAnswer() -> ResponseTracker.LocalAnswer? { tracker.popLocalAnswer() }
    func removeAllPending() { tracker.removeAllPending() }
    func reset() { tracker.reset() }

    /// The backend sent a message of `type`: what the tracker said, in words.
    func on(_ type: UInt8) -> String { describe(tracker.received(type)) }

    /// Runs a burst as the session does: the proxy's answers due before each message (and at
    /// the end), then the message unless dropped. Returns what the client sees: message types,
    /// the proxy's own answers in parentheses.
    func relay(_ types: [UInt8]) -> String {
        var seen: [String] = []
        func emitLocal() {
            while let answer = tracker.popLocalAnswer() {
                switch answer {
                case .parseComplete: seen.append("(1)")
                case .closeComplete: seen.append("(3)")
                case .none: break
                }
            }
        }
        for type in types {
            emitLocal()
            switch tracker.received(type) {
            case .drop: break
            case .forward, .readyForQuery, .error, .copyIn: seen.append(String(UnicodeScalar(type)))
            }
        }
        emitLocal()
        return seen.joined(separator: " ")
    }

    private func describe(_ action: ResponseTracker.Action) -> String {
        switch action {
        case .forward(let entry): return ["forward", entry.map(name)].compactMap { $0 }.joined(separator: " ")
        case .drop(let entry): return ["drop", entry.map(name)].compactMap { $0 }.joined(separator: " ")
        case .readyForQuery(let entry): return ["ready", entry.map(name)].compactMap { $0 }.joined(separator: " ")
        case .copyIn(let awaiting): return awaiting ? "copyIn awaitingCopyEnd" : "copyIn"
        case .error(.query): return "error query"
        case .error(.resetQuery): return "error resetQuery"
        case .error(.failed(let failed, let skipped, let syncFollows)):
            return "error failed \(name(failed)) skipped [\(skipped.map(name).joined(separator: " "))] "
                + (syncFollows ? "syncFollows" : "noSync")
        }
    }

    private func name(_ entry: PendingResponse) -> String {
        switch entry {
        case .query: return "query"
        case .sync: return "sync"
        case .parse: return "parse"
        case .unnamedParse: return "unnamedParse"
        case .injectedParse: return "injectedParse"
        case .duplicateParse: return "duplicateParse"
        case .injectedClose: return "injectedClose"
        case .bind: return "bind"
        case .describeStatement: return "describeStatement"
        case .shapeDescribe: return "shapeDescribe"
        case .changedResultType: return "changedResultType"
        case .describePortal: return "describePortal"
        case .execute: return "execute"
        case .resetQuery: return "resetQuery"
        case .close: return "close"
        case .injectedPlaceholder: return "injectedPlaceholder"
        case .localParseComplete: return "localParseComplete"
        case .copyEnd: return "copyEnd"
        case .localCloseComplete: return "localCloseComplete"
        }
    }
}
