/// An array-backed FIFO queue with O(1) amortized `popFirst`, random access, and O(n) removal
/// from the middle (used for cancellation, which is rare).
struct FIFOQueue<Element>: Sendable where Element: Sendable {
    private var storage: [Element] = []
    private var head = 0

    init() {}

    var count: Int { storage.count - head }
    var isEmpty: Bool { head == storage.count }
    var first: Element? { isEmpty ? nil : storage[head] }

    subscript(index: Int) -> Element { storage[head + index] }

    mutating func append(_ element: Element) { storage.append(element) }

    mutating func popFirst() -> Element? {
        guard head < storage.count else { return nil }
        let element = storage[head]
        head += 1
        compactIfNeeded()
        return element
    }

    mutating func remove(at index: Int) -> Element {
        let element = storage.remove(at: head + index)
        compactIfNeeded()
        return element
    }

    func firstIndex(where predicate: (Element) -> Bool) -> Int? {
        var index = head
        while index < storage.count {
            if predicate(storage[index]) { return index - head }
            index += 1
        }
        return nil
    }

    /// Removes and returns the elements from `index` to the end.
    mutating func removeSuffix(from index: Int) -> ArraySlice<Element> {
        let suffix = storage[(head + index)...]
        storage.removeSubrange((head + index)...)
        compactIfNeeded()
        return suffix
    }

    mutating func filterInPlace(_ isIncluded: (Element) -> Bool) {
        storage = storage[head...].filter(isIncluded)
        head = 0
    }

    private mutating func compactIfNeeded() {
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 32 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
    }
}
