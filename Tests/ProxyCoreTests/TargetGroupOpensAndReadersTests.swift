import NIOCore
@testable import ProxyCore
import Testing

// Paced opens, reader membership, unresponsive targets, the writer-available seconds and the
// retry policy of failed opens, with an injected clock.

private func t(_ seconds: Double) -> NIODeadline {
    .uptimeNanoseconds(1_000_000_000_000 + UInt64(seconds * 1e9))
}

private func makeGroup(_ targets: [String] = ["a", "b", "c"], readers: Bool = false) -> Group {
    Group(targets: targets, failoverWindow: .seconds(30), tracksReaders: readers)
}

private let writerUp = TargetProbeResult.up(.writer, maxConnections: nil)

private func down(unresponsive: Bool) -> TargetProbeResult {
    .down(TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: "no answer"), unresponsive: unresponsive)
}

@Suite struct PacedOpensTests {
    @Test func limitIsAQuarterOfThePoolCapAtLeastFour() {
        #expect(Group.openLimit(poolMaxConnections: 1) == 4)
        #expect(Group.openLimit(poolMaxConnections: 16) == 4)
        #expect(Group.openLimit(poolMaxConnections: 23) == 5)
        #expect(Group.openLimit(poolMaxConnections: 400) == 100)
    }

    @Test func slotsPassToQueuedOpensInOrder() {
        var group = makeGroup()
        for _ in 0..<4 { #expect(group.openSlotRequested(poolMaxConnections: 10) == .granted) }
        guard case .queued(let fifth) = group.openSlotRequested(poolMaxConnections: 10),
              case .queued(let sixth) = group.openSlotRequested(poolMaxConnections: 10)
        else {
            Issue.record("expected the fifth and sixth opens to queue")
            return
        }
        #expect(fifth != sixth)
        // Each finishing open hands its slot on, oldest first; then slots free up.
        #expect(group.openFinished() == fifth)
        #expect(group.openFinished() == sixth)
        #expect(group.openFinished() == nil)  // 3 opening
        #expect(group.openSlotRequested(poolMaxConnections: 10) == .granted)  // 4 opening
        if case .granted = group.openSlotRequested(poolMaxConnections: 10) { Issue.record("a fifth open ran at once") }
    }

    @Test func aLargerPoolAllowsMoreAtOnce() {
        var group = makeGroup()
        for _ in 0..<4 { #expect(group.openSlotRequested(poolMaxConnections: 4) == .granted) }
        if case .granted = group.openSlotRequested(poolMaxConnections: 4) { Issue.record("the limit of 4 was passed") }
        // The pool grew (its cap was read): the limit is read at each request.
        #expect(group.openSlotRequested(poolMaxConnections: 40) == .granted)
    }
}

@Suite struct ReaderMembershipTests {
    @Test func readerUpJoinsDownOrPromotedLeaves() {
        var group = makeGroup(readers: true)
        _ = group.targetChecked("a", writerUp, now: t(0))
        let joined = group.targetChecked("b", .up(.reader, maxConnections: 100), now: t(1))
        #expect(joined.readers.activate == [Group.ReaderActivation(target: "b", maxConnections: 100)])
        #expect(joined.readers.retire.isEmpty)
        #expect(group.activeReaders == ["b"])
        // Already a reader: nothing changes.
        #expect(group.targetChecked("b", .up(.reader, maxConnections: 100), now: t(2)).readers == Group.ReaderChanges())
        let failed = group.targetChecked("b", down(unresponsive: false), now: t(3))
        #expect(failed.readers.retire == ["b"])
        #expect(group.activeReaders.isEmpty)
        let back = group.targetChecked("b", .up(.reader, maxConnections: nil), now: t(4))
        // Its limit is still known from before.
        #expect(back.readers.activate == [Group.ReaderActivation(target: "b", maxConnections: 100)])
        let promoted = group.targetChecked("b", writerUp, now: t(5))
        #expect(promoted.readers.retire == ["b"])
        #expect(promoted.writerChange == nil)  // a is still the writer
    }

    @Test func readersJoinInTargetOrder() {
        var group = makeGroup(readers: true)
        _ = group.targetChecked("c", .up(.reader, maxConnections: nil), now: t(0))
        #expect(group.activeReaders == ["c"])
        let action = group.targetChecked("b", .up(.reader, maxConnections: 7), now: t(1))
        #expect(action.readers.activate == [Group.ReaderActivation(target: "b", maxConnections: 7)])
        #expect(group.activeReaders == ["b", "c"])
    }

    @Test func aDeregisteredReaderRetiresAtTheNextCheck() {
        var group = makeGroup(readers: true)
        _ = group.targetChecked("b", .up(.reader, maxConnections: nil), now: t(0))
        #expect(group.targetsChanged(["a", "c"], now: t(1)) == false)
        // Its own late check changes nothing but the reader set.
        let action = group.targetChecked("b", .up(.reader, maxConnections: nil), now: t(2))
        #expect(action.readers.retire == ["b"])
        #expect(group.activeReaders.isEmpty)
    }

    @Test func readersAreNotTrackedWithoutReadOnlyEndpoints() {
        var group = makeGroup(readers: false)
        let action = group.targetChecked("b", .up(.reader, maxConnections: 100), now: t(0))
        #expect(action.readers == Group.ReaderChanges())
        #expect(group.activeReaders.isEmpty)
        #expect(group.roleName(of: "b") == "READ_ONLY")
    }
}

@Suite struct UnresponsiveTargetTests {
    @Test func theWritersPoolsAreAbortedAndTheStopLoggedOnce() {
        var group = makeGroup(["a", "b"])
        _ = group.targetChecked("a", writerUp, now: t(0))
        let first = group.targetChecked("a", down(unresponsive: true), now: t(1))
        #expect(first.unresponsive == Group.Unresponsive(target: "a", wasWriter: true, newly: true))
        #expect(first.writerBecameUnavailable)
        // Still no answer: its pools are aborted again (backends opened meanwhile), not logged again.
        let second = group.targetChecked("a", down(unresponsive: true), now: t(2))
        #expect(second.unresponsive == Group.Unresponsive(target: "a", wasWriter: true, newly: false))
        #expect(!second.writerBecameUnavailable)
        // An answer (even a refusal) ends it; the next silence is news again.
        #expect(group.targetChecked("a", down(unresponsive: false), now: t(3)).unresponsive == nil)
        #expect(group.targetChecked("a", down(unresponsive: true), now: t(4)).unresponsive?.newly == true)
    }

    @Test func aReaderIsNotTheWriter() {
        var group = makeGroup(["a", "b"], readers: true)
        _ = group.targetChecked("a", writerUp, now: t(0))
        _ = group.targetChecked("b", .up(.reader, maxConnections: nil), now: t(0))
        let action = group.targetChecked("b", down(unresponsive: true), now: t(1))
        #expect(action.unresponsive == Group.Unresponsive(target: "b", wasWriter: false, newly: true))
        #expect(action.readers.retire == ["b"])
        #expect(group.writerAvailable)
    }

    @Test func wasWriterIsDecidedBeforeTheElection() {
        var group = makeGroup(["a", "b"])
        _ = group.targetChecked("a", writerUp, now: t(0))
        _ = group.targetChecked("b", writerUp, now: t(0))
        let action = group.targetChecked("a", down(unresponsive: true), now: t(1))
        #expect(action.unresponsive?.wasWriter == true)
        #expect(action.writerChange == Group.WriterChange(old: "a", new: "b", maxConnections: nil))
    }
}

@Suite struct WriterAvailableSecondsTests {
    @Test func secondsAreReportedOnceEach() {
        var group = makeGroup(["a"])
        #expect(group.writerAvailableSecondsToReport(now: t(5)) == 0)
        _ = group.targetChecked("a", writerUp, now: t(10))
        #expect(group.writerAvailableSecondsToReport(now: t(20)) == 10)
        #expect(group.writerAvailableSecondsToReport(now: t(25)) == 5)
        _ = group.targetChecked("a", down(unresponsive: false), now: t(30))
        #expect(group.writerAvailableSecondsToReport(now: t(40)) == 5)
        #expect(group.writerAvailableSecondsToReport(now: t(50)) == 0)
        _ = group.targetChecked("a", writerUp, now: t(60))
        _ = group.writerSuspect("a", now: t(61.5))
        #expect(group.writerAvailableSecondsToReport(now: t(70)) == 1.5)
        // A writer deregistered while available stops the count too.
        _ = group.targetChecked("a", writerUp, now: t(80))
        _ = group.targetsChanged([], now: t(82))
        #expect(group.writerAvailableSecondsToReport(now: t(90)) == 2)
    }
}

@Suite struct BackendOpenRetryTests {
    @Test func connectionFailuresRetryUntilTheDeadline() {
        #expect(BackendOpenRetry.decide(after: .connectionFailed, now: t(1), deadline: t(2)) == .retryNow)
        #expect(BackendOpenRetry.decide(after: .connectionFailed, now: t(2), deadline: t(2)) == .giveUp)
    }

    @Test func refusedLoginsRetryAfterAPauseThatFitsBeforeTheDeadline() {
        #expect(BackendOpenRetry.decide(after: .refusingLoginsForNow, now: t(1), deadline: t(2))
            == .retryAfter(.milliseconds(100)))
        #expect(BackendOpenRetry.decide(after: .refusingLoginsForNow, now: t(1.9), deadline: t(2)) == .giveUp)
    }

    @Test func otherFailuresAreFinal() {
        #expect(BackendOpenRetry.decide(after: .final, now: t(1), deadline: t(2)) == .giveUp)
    }
}
