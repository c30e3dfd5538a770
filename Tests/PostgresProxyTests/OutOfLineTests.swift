import Testing

@testable import PostgresProxy

@Suite struct OutOfLineTests {
    @Test func nilTakesOneWord() {
        #expect(MemoryLayout<OutOfLine<[String: String]>>.size == MemoryLayout<Int>.size)
    }

    @Test func setChangeAndClear() {
        var stored = OutOfLine<[Int]>()
        #expect(stored.value == nil)
        stored.value = [1]
        stored.value?.append(2)
        #expect(stored.value == [1, 2])
        stored.value = nil
        #expect(stored.value == nil)
        #expect(stored.box == nil)
    }

    /// A copy shares the box until one side changes the value; the other keeps its own.
    @Test func copiesDoNotShareChanges() {
        var first = OutOfLine<[Int]>()
        first.value = [1]
        var second = first
        second.value?.append(2)
        #expect(first.value == [1])
        #expect(second.value == [1, 2])
        first.value = nil
        #expect(second.value == [1, 2])
    }

    /// Setting a value again keeps a box owned alone.
    @Test func settingAgainKeepsTheBox() {
        var stored = OutOfLine<[Int]>()
        stored.value = [1]
        weak let box = stored.box  // weak: a strong reference here would make the box shared
        stored.value?.append(2)
        #expect(stored.box === box)
        #expect(stored.value == [1, 2])
    }
}
