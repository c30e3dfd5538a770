/// In-place changes to a dictionary's values that do not allocate.
///
/// Why not `dictionary[key]?.count += 1` or `dictionary[key]!.count += 1`: the optional
/// subscript modifies through three nested coroutines (`Dictionary`, `_Variant`,
/// `_NativeDictionary`), and Swift 6.3 puts their frames on the heap: two allocations and two
/// frees per access. Two such accesses in the pool were 95% of the proxy's allocations per
/// select-only transaction (7.4 per transaction, counted with `bench/alloc`). The `default:`
/// subscript yields the value's storage directly and allocates nothing; these helpers use it.
extension Dictionary {
    /// Runs `body` on the value for `key`, which must be there (as `dictionary[key]!`).
    @inlinable @inline(__always)
    public mutating func modifyValue<R>(forKey key: Key, _ body: (inout Value) throws -> R) rethrows -> R {
        try body(&self[key, default: Self.absent(key)])
    }

    /// Runs `body` on the value for `key`, stored first as `defaultValue` if there is none.
    @inlinable @inline(__always)
    public mutating func modifyValue<R>(
        forKey key: Key, default defaultValue: @autoclosure () -> Value, _ body: (inout Value) throws -> R
    ) rethrows -> R {
        try body(&self[key, default: defaultValue()])
    }

    /// Runs `body` on the value for `key` if there is one (as `dictionary[key]?`); nil if not.
    /// Two hash lookups where the key is there: use `modifyValue` where it must be.
    @inlinable @inline(__always)
    public mutating func modifyValueIfPresent<R>(forKey key: Key, _ body: (inout Value) throws -> R) rethrows -> R? {
        guard index(forKey: key) != nil else { return nil }
        return try body(&self[key, default: Self.absent(key)])
    }

    @usableFromInline
    static func absent(_ key: Key) -> Value {
        preconditionFailure("no value for key \(key)")
    }
}
