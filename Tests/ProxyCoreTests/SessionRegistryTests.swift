import ProxyCore
import Testing

@Suite struct SessionRegistryTests {
    /// A session (the registry keeps objects).
    private final class Named: Equatable {
        let name: String
        init(_ name: String) { self.name = name }
        static func == (lhs: Named, rhs: Named) -> Bool { lhs.name == rhs.name }
    }

    /// Draws from a fixed list, so tests choose the keys.
    private struct Draws {
        var values: [UInt64]
        mutating func next() -> UInt64 { values.removeFirst() }
    }

    @Test func aKeyIsSplitIntoAPositiveIdAndASecret() {
        var registry = SessionRegistry<Named>()
        var key: CancelKey?
        _ = registry.register(random: { 0xDEAD_BEEF_FFFF_FFFF }) { drawn in key = drawn; return Named("a") }
        #expect(key == CancelKey(id: 0x7FFF_FFFF, secret: 0xDEAD_BEEF))
        #expect(Int32(exactly: key!.id) != nil)
    }

    @Test func aZeroOrTakenIdIsDrawnAgain() {
        var registry = SessionRegistry<Named>()
        var draws = Draws(values: [0x1_0000_0005, 0x2_0000_0000, 0x3_0000_0005, 0x4_0000_0006])
        var keys: [CancelKey] = []
        _ = registry.register(random: { draws.next() }) { keys.append($0); return Named("first") }
        _ = registry.register(random: { draws.next() }) { keys.append($0); return Named("second") }
        #expect(keys == [CancelKey(id: 5, secret: 1), CancelKey(id: 6, secret: 4)])
        #expect(draws.values.isEmpty)
        #expect(registry.count == 2)
    }

    @Test func aCancelFindsItsSessionOnlyWithTheRightSecret() {
        var registry = SessionRegistry<Named>()
        _ = registry.register(random: { 0x0000_0009_0000_0007 }) { _ in Named("client") }
        #expect(registry.session(for: CancelKey(id: 7, secret: 9))?.name == "client")
        #expect(registry.session(for: CancelKey(id: 7, secret: 8)) == nil)
        #expect(registry.session(for: CancelKey(id: 8, secret: 9)) == nil)
        registry.remove(id: 7)
        #expect(registry.session(for: CancelKey(id: 7, secret: 9)) == nil)
        #expect(registry.isEmpty)
    }

    @Test func theDescriptionNeverShowsTheSecret() {
        #expect("\(CancelKey(id: 42, secret: 123_456))" == "42")
    }
}
