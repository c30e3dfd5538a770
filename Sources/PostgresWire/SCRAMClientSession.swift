import Crypto
import Synchronization

/// The client side of one SCRAM-SHA-256 login (the proxy authenticating to the database).
///
/// Usage: send ``clientFirstMessage()`` in SASLInitialResponse, answer AuthenticationSASLContinue
/// with ``receiveServerFirst(_:)`` in SASLResponse, then check AuthenticationSASLFinal with
/// ``verifyServerFinal(_:)`` before trusting AuthenticationOk.
public struct SCRAMClientSession: Sendable, CustomStringConvertible {
    private enum State: Sendable {
        case initial
        case waitingForServerFirst
        case waitingForServerFinal(expectedServerSignature: [UInt8])
        case failed
    }

    private let username: String
    private let password: [UInt8]
    private let clientNonce: [UInt8]
    private let saltedPasswordCache: (any SCRAMSaltedPasswordProvider)?
    private var state: State = .initial

    /// Creates a session.
    ///
    /// - Parameters:
    ///   - username: Sent in client-first; PostgreSQL ignores it (libpq sends an empty one).
    ///   - password: The password, used as raw UTF-8 (see ``SCRAM``).
    ///   - nonce: The client nonce, for tests; a fresh random one when `nil` or when it is not
    ///     printable ASCII without commas.
    ///   - saltedPasswordCache: Where to look up and store the PBKDF2 result so that it is
    ///     computed once per (password, salt, iterations) in the process.
    public init(
        username: String = "",
        password: String,
        nonce: String? = nil,
        saltedPasswordCache: (any SCRAMSaltedPasswordProvider)? = nil
    ) {
        self.username = username
        self.password = Array(password.utf8)
        self.clientNonce = SCRAM.nonceBytes(nonce)
        self.saltedPasswordCache = saltedPasswordCache
    }

    /// client-first-message-bare: `n=<username>,r=<nonce>`.
    private var clientFirstBare: [UInt8] {
        var bare = Array("n=".utf8)
        for byte in self.username.utf8 {
            switch byte {
            case UInt8(ascii: ","): bare += "=2C".utf8
            case UInt8(ascii: "="): bare += "=3D".utf8
            case 0: continue
            default: bare.append(byte)
            }
        }
        bare += ",r=".utf8
        bare += self.clientNonce
        return bare
    }

    /// client-first-message: `n,,n=<username>,r=<nonce>` (no channel binding), to send in
    /// SASLInitialResponse with mechanism ``SCRAM/mechanism``.
    public mutating func clientFirstMessage() -> [UInt8] {
        self.state = .waitingForServerFirst
        return Array("n,,".utf8) + self.clientFirstBare
    }

    /// Processes server-first (AuthenticationSASLContinue data) and returns client-final
    /// (to send in SASLResponse).
    public mutating func receiveServerFirst(_ bytes: [UInt8]) throws(SCRAMError) -> [UInt8] {
        guard case .waitingForServerFirst = self.state else {
            self.state = .failed
            throw .unexpectedMessage
        }
        self.state = .failed
        var scanner = try SCRAMScanner(bytes)
        if scanner.peek == UInt8(ascii: "m") {
            throw .unsupportedMandatoryExtension
        }
        let nonce = try scanner.readAttribute("r")
        guard SCRAM.isPrintable(nonce) else { throw .invalidNonce }
        guard nonce.count > self.clientNonce.count, nonce.starts(with: self.clientNonce) else { throw .nonceMismatch }
        let saltText = try scanner.readAttribute("s")
        guard let salt = SCRAMBase64.decode(saltText) else { throw .invalidBase64 }
        guard !salt.isEmpty else { throw .invalidSalt }
        let iterationText = try scanner.readAttribute("i")
        guard let iterations = parsePositiveInt32(iterationText) else { throw .invalidIterationCount }
        while !scanner.isAtEnd {
            try scanner.skipAnyAttribute()
        }

        let saltedPassword = self.saltedPasswordCache?.saltedPassword(password: self.password, salt: salt, iterations: iterations)
            ?? SCRAM.saltedPassword(password: self.password, salt: salt, iterations: iterations)
        let keys = SCRAMKeys(saltedPassword: saltedPassword)

        var clientFinal = Array("c=biws,r=".utf8)  // biws = base64("n,,")
        clientFinal += nonce
        var authMessage = self.clientFirstBare
        authMessage.append(UInt8(ascii: ","))
        authMessage += bytes
        authMessage.append(UInt8(ascii: ","))
        authMessage += clientFinal

        let clientSignature = SCRAM.hmac(key: keys.storedKey, authMessage)
        let proof = SCRAM.xor(keys.clientKey, clientSignature)
        let serverSignature = SCRAM.hmac(key: keys.serverKey, authMessage)
        clientFinal += ",p=".utf8
        clientFinal += SCRAMBase64.encode(proof)
        self.state = .waitingForServerFinal(expectedServerSignature: serverSignature)
        return clientFinal
    }

    /// Checks server-final (AuthenticationSASLFinal data): the server must prove it knows the
    /// password too.
    ///
    /// - Throws: ``SCRAMError/serverError(_:)`` for `e=...`, ``SCRAMError/serverSignatureMismatch``
    ///   for a wrong signature, another case for a malformed message or the wrong state.
    public func verifyServerFinal(_ bytes: [UInt8]) throws(SCRAMError) {
        guard case .waitingForServerFinal(let expected) = self.state else {
            throw .unexpectedMessage
        }
        var scanner = try SCRAMScanner(bytes)
        if scanner.peek == UInt8(ascii: "e") {
            let error = try scanner.readAttribute("e")
            throw .serverError(String(decoding: error, as: UTF8.self))
        }
        let verifierText = try scanner.readAttribute("v")
        while !scanner.isAtEnd {
            try scanner.skipAnyAttribute()
        }
        guard let signature = SCRAMBase64.decode(verifierText) else { throw .invalidBase64 }
        guard constantTimeEquals(signature, expected) else { throw .serverSignatureMismatch }
    }

    /// The state only, never the password.
    public var description: String {
        switch self.state {
        case .initial: return "SCRAMClientSession(initial)"
        case .waitingForServerFirst: return "SCRAMClientSession(waitingForServerFirst)"
        case .waitingForServerFinal: return "SCRAMClientSession(waitingForServerFinal)"
        case .failed: return "SCRAMClientSession(failed)"
        }
    }
}

/// A hook providing SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations), so that
/// an implementation can compute it once and reuse it for every login with the same values.
public protocol SCRAMSaltedPasswordProvider: Sendable {
    /// The 32-byte salted password for these values.
    func saltedPassword(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8]
}

/// A thread-safe process-wide cache of salted passwords, keyed by (SHA-256 of the password,
/// salt, iterations). PBKDF2 runs outside the lock; two concurrent misses may both compute it.
///
/// When full, the cache is emptied (entries for rotated passwords do not accumulate).
@available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
public final class SCRAMSaltedPasswordCache: SCRAMSaltedPasswordProvider {
    private struct Key: Hashable {
        var passwordDigest: [UInt8]
        var salt: [UInt8]
        var iterations: Int
    }

    private let maximumEntries: Int
    private let entries = Mutex<[Key: [UInt8]]>([:])

    /// Creates an empty cache holding at most `maximumEntries` salted passwords.
    public init(maximumEntries: Int = 1024) {
        self.maximumEntries = max(maximumEntries, 1)
    }

    /// The number of cached entries.
    public var count: Int {
        self.entries.withLock { $0.count }
    }

    public func saltedPassword(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let key = Key(passwordDigest: SCRAM.sha256(password), salt: salt, iterations: iterations)
        if let cached = self.entries.withLock({ $0[key] }) {
            return cached
        }
        let computed = SCRAM.saltedPassword(password: password, salt: salt, iterations: iterations)
        self.entries.withLock { entries in
            if entries.count >= self.maximumEntries {
                entries.removeAll()
            }
            entries[key] = computed
        }
        return computed
    }

    /// Removes all entries (for example after a credential rotation).
    public func removeAll() {
        self.entries.withLock { $0.removeAll() }
    }
}
