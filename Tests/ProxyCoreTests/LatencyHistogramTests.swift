import Prometheus
import ProxyCore
import Testing

/// The per-loop latency histograms must render exactly what swift-prometheus's histogram
/// rendered before them (dashboards and `histogram_quantile` alerts read these series): the
/// same observations go into both and the texts are compared.
@Suite struct LatencyHistogramTests {
    static let labels = [("proxy", "p\"1"), ("target_group", "default")]

    private func prometheusText(_ values: [Int64], name: String, bounds: [Duration]) -> String {
        let registry = PrometheusCollectorRegistry()
        let histogram = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: "Help with a \\ backslash."),
            labels: Self.labels, buckets: bounds)
        for value in values { histogram.record(.nanoseconds(value)) }
        return registry.emitToString()
    }

    private func ourText(_ perLoop: [[Int64]], name: String, bounds: [Duration]) -> String {
        let histogram = LatencyHistogram(name: name, help: "Help with a \\ backslash.", labels: Self.labels, bounds: bounds)
        var total = LatencyBuckets(bounds: bounds)
        for values in perLoop {
            var loop = LatencyBuckets(bounds: bounds)
            for value in values { loop.record(nanoseconds: value) }
            total.add(loop)
        }
        histogram.publish(total)
        return LatencyHistogram.render([histogram])
    }

    @Test func rendersWhatSwiftPrometheusRenders() {
        var generator = SystemRandomNumberGenerator()
        let bounds = ProxyMetrics.queryLatencyBuckets
        for _ in 0..<20 {
            let loops = (0..<3).map { _ in
                (0..<Int.random(in: 0...200, using: &generator)).map { _ -> Int64 in
                    // Spread over every bucket, bounds themselves included (le is inclusive).
                    switch Int.random(in: 0..<4, using: &generator) {
                    case 0:
                        let (seconds, attoseconds) = bounds.randomElement(using: &generator)!.components
                        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
                    case 1: return Int64.random(in: 0...200_000, using: &generator)
                    case 2: return Int64.random(in: 0...2_000_000_000, using: &generator)
                    default: return Int64.random(in: 0...200_000_000_000, using: &generator)
                    }
                }
            }
            let name = "concierge_query_database_response_latency_seconds"
            #expect(ourText(loops, name: name, bounds: bounds) == prometheusText(loops.flatMap { $0 }, name: name, bounds: bounds))
        }
    }

    @Test func oneHelpAndTypePerNameAcrossProxies() {
        let a = LatencyHistogram(name: "x_seconds", help: "X.", labels: [("proxy", "a")], bounds: [.milliseconds(1)])
        let b = LatencyHistogram(name: "x_seconds", help: "X.", labels: [("proxy", "b")], bounds: [.milliseconds(1)])
        var buckets = LatencyBuckets(bounds: b.bounds)
        buckets.record(nanoseconds: 1_000_000)
        buckets.record(nanoseconds: 1_000_001)
        b.publish(buckets)
        #expect(LatencyHistogram.render([a, b]) == """
            # HELP x_seconds X.
            # TYPE x_seconds histogram
            x_seconds_bucket{proxy="a",le="0.001"} 0
            x_seconds_bucket{proxy="a",le="+Inf"} 0
            x_seconds_sum{proxy="a"} 0.0
            x_seconds_count{proxy="a"} 0
            x_seconds_bucket{proxy="b",le="0.001"} 1
            x_seconds_bucket{proxy="b",le="+Inf"} 2
            x_seconds_sum{proxy="b"} 0.002000001
            x_seconds_count{proxy="b"} 2

            """)
    }
}
