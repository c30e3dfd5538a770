import NIOCore
@testable import ProxyCore
import Testing

// A writer demoted while up (MySQL's `SET GLOBAL read_only = 1`, the first step of a switchover):
// the runtime retires the writer's pool, so that new transactions wait for the next writer
// instead of running on a server that refuses writes (found by test_mysql_failover.py: until the
// replica was promoted, every client's INSERT went to the demoted primary and got its 1290).

private func t(_ seconds: Double) -> NIODeadline {
    .uptimeNanoseconds(1_000_000_000_000 + UInt64(seconds * 1e9))
}

private let writerUp = TargetProbeResult.up(.writer, maxConnections: 100)
private let readerUp = TargetProbeResult.up(.reader, maxConnections: 100)

@Suite struct WriterDemotionTests {
    @Test func aWriterThatAnswersAsAReaderIsDemotedAndNewOpensWait() {
        var group = Group(targets: ["a", "b"], failoverWindow: .seconds(10), tracksReaders: false)
        _ = group.targetChecked("a", writerUp, now: t(1))
        _ = group.targetChecked("b", readerUp, now: t(1))
        let demoted = group.targetChecked("a", readerUp, now: t(2))
        #expect(demoted.writerDemoted == "a")
        #expect(demoted.writerChange == nil)  // no writer to change to yet
        #expect(demoted.writerBecameUnavailable)
        #expect(group.roleName(of: "a") == "READ_ONLY")
        // New opens wait for the next writer (the failover window), not fail.
        guard case .wait(let waiter) = group.openRequested(began: t(2.1)) else {
            Issue.record("an open during the switchover waits")
            return
        }
        // Checks of a reader that stays one demote nothing again.
        #expect(group.targetChecked("a", readerUp, now: t(2.2)).writerDemoted == nil)
        // The replica is promoted: the waiter goes on, to it.
        let promoted = group.targetChecked("b", writerUp, now: t(3))
        #expect(promoted.writerChange == Group.WriterChange(old: "a", new: "b", maxConnections: 100))
        #expect(promoted.resume == [waiter])
        #expect(promoted.writerDemoted == nil)
    }

    @Test func aDemotionWithAnotherWriterReadyIsAlsoAWriterChange() {
        var group = Group(targets: ["a", "b"], failoverWindow: .seconds(10), tracksReaders: false)
        _ = group.targetChecked("a", writerUp, now: t(1))
        _ = group.targetChecked("b", writerUp, now: t(1))  // promoted before a was demoted
        let action = group.targetChecked("a", readerUp, now: t(2))
        #expect(action.writerDemoted == "a")
        #expect(action.writerChange == Group.WriterChange(old: "a", new: "b", maxConnections: 100))
    }

    @Test func onlyTheWriterInUseIsDemoted() {
        var group = Group(targets: ["a", "b"], failoverWindow: .seconds(10), tracksReaders: false)
        // The first target answering as a reader at start was never the writer in use.
        #expect(group.targetChecked("a", readerUp, now: t(1)).writerDemoted == nil)
        #expect(group.targetChecked("b", writerUp, now: t(1)).writerDemoted == nil)
        // Another reader, or a writer that stays one: nothing.
        #expect(group.targetChecked("a", readerUp, now: t(2)).writerDemoted == nil)
        #expect(group.targetChecked("b", writerUp, now: t(2)).writerDemoted == nil)
        // A writer going down is lost, not demoted (its connections are dead anyway).
        let down = TargetProbeResult.down(
            TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: "refused"), unresponsive: false)
        #expect(group.targetChecked("b", down, now: t(3)).writerDemoted == nil)
    }
}
