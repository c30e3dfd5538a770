import ConciergeConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// The TLS context clients are served with, rebuilt when the certificate or key file changes
/// (renewed certificates are picked up without a restart; connections already open keep theirs).
final class ServerTLSContextSource: @unchecked Sendable {
    private let lock = NIOLock()
    private var context: NIOSSLContext
    private var files: ClientTLSConfiguration
    private var stamps: [FileStamp?]

    public init(_ files: ClientTLSConfiguration) throws {
        self.files = files
        self.stamps = [FileStamp(files.certificateFile), FileStamp(files.privateKeyFile)]
        self.context = try Self.makeContext(files)
    }

    var current: NIOSSLContext { lock.withLock { context } }

    static func makeContext(_ files: ClientTLSConfiguration) throws -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(files.certificateFile)
        } catch {
            throw SetupError(message: "\(files.certificateFile): not a PEM certificate chain (\(error))")
        }
        do {
            key = try NIOSSLPrivateKey(file: files.privateKeyFile, format: .pem)
        } catch {
            throw SetupError(message: "\(files.privateKeyFile): not a PEM private key")
        }
        guard !chain.isEmpty else { throw SetupError(message: "\(files.certificateFile): no certificate") }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw SetupError(message: "\(files.certificateFile) and \(files.privateKeyFile) do not make a usable TLS identity (\(error))")
        }
    }

    /// Rebuilds the context if a file changed (size, time or inode). A file that does not load
    /// (e.g. caught halfway through a rewrite) leaves the old context in use and is tried again
    /// at the next check. Returns whether a new context is in use.
    @discardableResult
    func reloadIfChanged(logger: Logger) -> Bool {
        let (files, old) = lock.withLock { (self.files, self.stamps) }
        let now = [FileStamp(files.certificateFile), FileStamp(files.privateKeyFile)]
        guard now != old else { return false }
        do {
            let context = try Self.makeContext(files)
            lock.withLock {
                self.context = context
                self.stamps = now
            }
            logger.info("TLS certificate reloaded", metadata: ["concierge.certificate_file": "\(files.certificateFile)"])
            return true
        } catch {
            logger.error("TLS certificate not reloaded; the previous one stays in use", metadata: [
                "concierge.certificate_file": "\(files.certificateFile)", "concierge.error": "\(error)",
            ])
            return false
        }
    }

    /// New files (a configuration reload): loaded now, or an error and nothing changes.
    func replace(with files: ClientTLSConfiguration) throws {
        let context = try Self.makeContext(files)
        lock.withLock {
            self.files = files
            self.context = context
            self.stamps = [FileStamp(files.certificateFile), FileStamp(files.privateKeyFile)]
        }
    }
}

/// A file or document the server cannot start (or reload) with: a certificate, a key, a policy.
struct SetupError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// What identifies a file's content cheaply: device, inode, size and modification time.
struct FileStamp: Equatable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var seconds: Int
    var nanoseconds: Int

    init?(_ path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        seconds = Int(info.st_mtim.tv_sec)
        nanoseconds = Int(info.st_mtim.tv_nsec)
    }
}

/// The TLS side of connections to the database (`target_group.tls`).
enum BackendTLS {
    /// The client context for `configuration`, or nil for `disable`.
    static func makeContext(_ configuration: BackendTLSConfiguration) throws -> NIOSSLContext? {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        switch configuration.mode {
        case .disable:
            return nil
        case .require:
            tls.certificateVerification = .none
        case .verifyFull:
            tls.certificateVerification = .fullVerification
            if let ca = configuration.caFile {
                do {
                    tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
                } catch {
                    throw SetupError(message: "\(ca): not a PEM certificate file (\(error))")
                }
            }
        }
        return try NIOSSLContext(configuration: tls)
    }

    /// The name to send as SNI and to check the certificate against: nil for an IP address
    /// (then the certificate must name that address, which NIOSSL checks against the peer).
    static func serverHostname(_ host: String) -> String? {
        if host.contains(":") { return nil }  // IPv6 literal
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        if parts.count == 4, parts.allSatisfy({ UInt8($0) != nil }) { return nil }
        return host
    }
}
