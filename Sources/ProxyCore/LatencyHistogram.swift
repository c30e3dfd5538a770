import NIOConcurrencyHelpers
import Prometheus

/// One event loop's counts for a latency histogram: plain integers, no lock, no atomic.
///
/// Why not swift-prometheus's `Histogram` on the data path: its `record` takes a lock and
/// compares the value with every bucket bound (cumulative counts, Duration compares), about 800
/// instructions; the proxy records two latencies per transaction, 5% of its instructions per
/// select-only transaction (counted with `bench/profile/callgrind.sh`). Here a record is a
/// short scan of integer bounds (most values fall in the first buckets) and two additions; the
/// loops' counts are summed at scrape (as `QueryRequests` is) and rendered by
/// `LatencyHistogram` in the same text as swift-prometheus's histograms.
public struct LatencyBuckets: Sendable {
    /// Upper bounds in nanoseconds, ascending (a value equal to a bound falls in its bucket,
    /// Prometheus's `le`).
    @usableFromInline let bounds: [Int64]
    /// Per bucket, not cumulative; the last one counts values above every bound.
    @usableFromInline var counts: [Int]
    @usableFromInline var sum: Int64 = 0

    public init(bounds: [Duration]) {
        self.bounds = bounds.map { Self.nanoseconds($0) }
        self.counts = Array(repeating: 0, count: bounds.count + 1)
    }

    @inlinable
    public mutating func record(nanoseconds value: Int64) {
        let value = max(0, value)
        // The first bound not below the value, by bisection: recorded once per borrow, where a
        // scan from the first bound walked most of them for a client that had waited.
        var low = 0
        var high = bounds.count
        while low < high {
            let middle = (low &+ high) &>> 1
            if bounds[middle] < value { low = middle &+ 1 } else { high = middle }
        }
        counts[low] &+= 1
        sum &+= value
    }

    /// Observations recorded.
    public var count: Int { counts.reduce(0, &+) }
    public var sumNanoseconds: Int64 { sum }

    /// Cumulative counts per bound, as Prometheus's `_bucket{le=...}` series give them.
    public var cumulativeCounts: [Int] {
        var running = 0
        return counts.dropLast().map { running &+= $0; return running }
    }

    /// Adds another loop's counts (same bounds).
    public mutating func add(_ other: LatencyBuckets) {
        precondition(other.bounds == bounds, "latency histograms with different buckets")
        for index in counts.indices { counts[index] &+= other.counts[index] }
        sum &+= other.sum
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// A latency histogram whose counts the event loops keep (`LatencyBuckets`) and a scrape
/// publishes here; rendered with the proxy's other metrics in Prometheus's text format.
public final class LatencyHistogram: Sendable {
    public let name: String
    public let help: String
    public let bounds: [Duration]
    private let labels: String
    private let published: NIOLockedValueBox<LatencyBuckets>

    public init(name: String, help: String, labels: [(String, String)], bounds: [Duration]) {
        self.name = name
        self.help = help
        self.bounds = bounds
        self.labels = labels.map { "\($0.0)=\"\(Self.escapedLabelValue($0.1))\"" }.joined(separator: ",")
        self.published = NIOLockedValueBox(LatencyBuckets(bounds: bounds))
    }

    /// The sum of every loop's counts since the proxy started (so the series only grow).
    public func publish(_ total: LatencyBuckets) { published.withLockedValue { $0 = total } }

    /// What the last scrape published.
    public var snapshot: LatencyBuckets { published.withLockedValue { $0 } }

    /// Histograms in Prometheus's text format, one `# HELP`/`# TYPE` per name (several proxies
    /// share a name, each with its own labels), as swift-prometheus renders its own.
    public static func render(_ histograms: [LatencyHistogram]) -> String {
        var out = ""
        var names: [String] = []
        var byName: [String: [LatencyHistogram]] = [:]
        for histogram in histograms {
            if byName[histogram.name] == nil { names.append(histogram.name) }
            byName[histogram.name, default: []].append(histogram)
        }
        for name in names {
            let family = byName[name]!
            if !family[0].help.isEmpty {
                out += "# HELP \(name) \(family[0].help.replacingBackslashes())\n"
            }
            out += "# TYPE \(name) histogram\n"
            for histogram in family { histogram.render(into: &out) }
        }
        return out
    }

    private func render(into out: inout String) {
        let state = snapshot
        let prefix = labels.isEmpty ? "" : labels + ","
        for (bound, count) in zip(bounds, state.cumulativeCounts) {
            out += "\(name)_bucket{\(prefix)le=\"\(bound.bucketRepresentation)\"} \(count)\n"
        }
        let count = state.count
        out += "\(name)_bucket{\(prefix)le=\"+Inf\"} \(count)\n"
        let braces = labels.isEmpty ? " " : "{\(labels)} "
        out += "\(name)_sum\(braces)\(Duration.nanoseconds(state.sumNanoseconds).bucketRepresentation)\n"
        out += "\(name)_count\(braces)\(count)\n"
    }

    private static func escapedLabelValue(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}

extension String {
    fileprivate func replacingBackslashes() -> String {
        var out = ""
        for character in self { out += character == "\\" ? "\\\\" : String(character) }
        return out
    }
}
