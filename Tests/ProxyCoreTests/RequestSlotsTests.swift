import ConnectionPool
@testable import ProxyCore
import Testing

/// The driver's waiting requesters, by the slot in their request ids.
@Suite struct RequestSlotsTests {
    @Test func aStaleIdDoesNotReachTheRequestInItsReusedSlot() {
        var slots = RequestSlots<String>()
        let first = RequestID(clientID: 1, sequence: slots.reserve())
        slots.store("first", for: first)
        #expect(slots.remove(first) == "first")
        let second = RequestID(clientID: 2, sequence: slots.reserve())
        #expect(second.sequence == first.sequence)  // the freed slot, reused
        slots.store("second", for: second)
        #expect(slots.remove(first) == nil)
        #expect(slots.remove(RequestID(clientID: 3, sequence: 99)) == nil)
        #expect(slots.remove(second) == "second")
        #expect(slots.remove(second) == nil)
    }

    @Test func anUnusedReservationIsGivenBack() {
        var slots = RequestSlots<String>()
        let answered = RequestID(clientID: 1, sequence: slots.reserve())
        slots.unreserve(answered)
        #expect(slots.remove(answered) == nil)
        #expect(slots.reserve() == answered.sequence)
    }

    @Test func theMemoryOfABurstIsGivenBackWhenTheLastOneLeaves() {
        var slots = RequestSlots<Int>()
        let ids = (0..<1_000).map { n -> RequestID in
            let id = RequestID(clientID: UInt64(n), sequence: slots.reserve())
            slots.store(n, for: id)
            return id
        }
        #expect(slots.ids.count == 1_000 && slots.elements.count == 1_000)
        for (n, id) in ids.enumerated() { #expect(slots.remove(id) == n) }
        #expect(slots.ids.isEmpty && slots.elements.isEmpty && slots.free.isEmpty)
        // Ids of that burst name nothing afterwards.
        let next = RequestID(clientID: 5_000, sequence: slots.reserve())
        slots.store(7, for: next)
        #expect(slots.remove(ids[0]) == nil)
        #expect(slots.remove(next) == 7)
    }
}
