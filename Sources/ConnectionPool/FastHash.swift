/// Hash values for the pool's own identifiers without SipHash.
///
/// Why: a dictionary lookup hashes its key with `Hasher` (SipHash-1-3: seeding, combining and
/// finalizing cost about 150 instructions), and the pool and the runtime look up connection,
/// request and key identifiers about 16 times per forwarded transaction: 7% of the proxy's
/// instructions per select-only transaction, counted with `bench/profile/callgrind.sh`.
/// `Hashable`'s `_rawHashValue(seed:)` is the hook the standard library's own integer types use
/// to hash without a `Hasher`; these keys implement it with a 64-bit finalizer (MurmurHash3's
/// fmix64), which spreads every input bit over the low bits a dictionary's buckets use.
/// SipHash's resistance to chosen collisions is not needed here: connection and request
/// identifiers are counters the proxy allocates, and a `PoolKey`'s hash is SipHash-computed
/// once from its strings, then mixed with the per-dictionary seed here.
@inlinable @inline(__always)
func poolFastHash(_ value: UInt64, seed: Int) -> Int {
    var h = value ^ UInt64(bitPattern: Int64(seed))
    h ^= h >> 33
    h &*= 0xff51_afd7_ed55_8ccd
    h ^= h >> 33
    h &*= 0xc4ce_b9fe_1a85_ec53
    h ^= h >> 33
    return Int(bitPattern: UInt(h))
}
