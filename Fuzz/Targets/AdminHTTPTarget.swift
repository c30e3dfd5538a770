#if CONCIERGE_FUZZ_TESTABLE
import ConciergeConfig
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
@testable import ConciergeAdmin
@testable import ConciergeRuntime
@testable import ConciergeServer
@testable import PostgresServer

/// The admin API as a connection reads it: bytes into the real pipeline (NIO's HTTP/1 server
/// pipeline with its error handling, then `AdminHTTPHandler` and `AdminRouter`) over an
/// `EmbeddedChannel`, with one proxy whose settings, pool and targets the requests may change.
/// Each input gets a fresh proxy, so an input replays alone.
///
/// A request may register a target by host name, which the proxy resolves when it becomes the
/// writer: scripts/fuzz.sh runs the fuzzer in a network namespace of its own (`unshare -n`), so
/// no such lookup leaves the machine.
enum AdminHTTPTarget {
    static let logger = Logger(label: "concierge-fuzz", factory: { _ in SwiftLogNoOpLogHandler() })

    /// The first byte: bit 0 sets an admin token (`Authorization: Bearer fuzz-token`), bits 1-2
    /// the size of the pieces the rest is fed in (all at once, 1, 7 or 64 bytes). Properties:
    /// every response the connection writes starts with an HTTP/1 status line.
    static let adminHTTP: FuzzTargets.Target = { data in
        guard let flags = data.first else { return }
        let channel = EmbeddedChannel()
        let loop = channel.embeddedEventLoop
        let proxy = ProxyConfiguration(
            name: "app", listen: HostPort(host: "127.0.0.1", port: 1),
            auth: [AuthConfiguration(secretARN: "env:X", secret: .env(name: "X"))],
            targetGroup: TargetGroupConfiguration(targets: [TargetConfiguration(endpoint: HostPort(host: "127.0.0.1", port: 2))]))
        let runtime: PostgresRuntime
        do {
            runtime = try PostgresRuntime(
                configuration: proxy, credentials: [DatabaseCredential(username: "app", password: "secret")],
                group: loop, logger: logger)
        } catch {
            FuzzCheck.fail("admin: the proxy does not start: \(error)")
        }
        let router = AdminRouter(
            proxies: { [runtime] }, token: flags & 1 == 1 ? "fuzz-token" : nil, registry: .init(), logger: logger)
        do {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(AdminHTTPHandler(router: router))
        } catch {
            FuzzCheck.fail("admin: the pipeline does not build: \(error)")
        }
        let input = data.dropFirst()
        let piece = [Int.max, 1, 7, 64][Int(flags >> 1) & 3]
        var offset = input.startIndex
        while offset < input.endIndex, channel.isActive {
            let end = input.index(offset, offsetBy: min(piece, input.endIndex - offset))
            do {
                try channel.writeInbound(ByteBuffer(bytes: input[offset..<end]))
            } catch {
                // A framing error: answered 400 by NIO's error handler and the connection closed.
            }
            loop.run()
            offset = end
        }
        _ = AdminHTTPHandler.split(String(decoding: input, as: UTF8.self))
        loop.run()
        var output: [UInt8] = []
        while let part = try? channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let buffer) = part { output += buffer.readableBytesView }
        }
        if !output.isEmpty {
            FuzzCheck.require(output.starts(with: Array("HTTP/1.".utf8)), "admin: a response starts with \(output.prefix(16))")
        }
        _ = try? channel.finish()
        loop.run()
    }
}
#endif
