/// The server side of one SCRAM-SHA-256 login (a client authenticating to the proxy).
///
/// Follows PostgreSQL: the username in client-first is ignored (the StartupMessage's counts),
/// GS2 headers `n,,` and `y,,` are accepted, channel binding (`p=`) and authorization identities
/// are refused since SCRAM-SHA-256-PLUS is not offered. Any error ends the exchange; later
/// calls throw ``SCRAMError/unexpectedMessage``.
///
/// For an unknown user, run the exchange against a verifier derived from a random password so
/// that the failure looks like a wrong password.
public struct SCRAMServerSession: Sendable, CustomStringConvertible {
    private enum State: Sendable {
        case waitingForClientFirst
        case waitingForClientFinal(Exchange)
        case completed
        case failed
    }

    private struct Exchange: Sendable {
        var gs2Header: [UInt8]
        var clientFirstBare: [UInt8]
        var serverFirst: [UInt8]
        var combinedNonce: [UInt8]
    }

    /// The verifier of the expected password.
    public let verifier: SCRAMVerifier
    private let serverNonce: [UInt8]
    private var state: State = .waitingForClientFirst

    /// Creates a session.
    ///
    /// - Parameter nonce: The server's part of the nonce, for tests; a fresh random one when `nil`
    ///   or when it is not printable ASCII without commas.
    public init(verifier: SCRAMVerifier, nonce: String? = nil) {
        self.verifier = verifier
        self.serverNonce = SCRAM.nonceBytes(nonce)
    }

    /// Whether the client proved knowledge of the password.
    public var isAuthenticated: Bool {
        switch self.state {
        case .completed: return true
        case .waitingForClientFirst, .waitingForClientFinal, .failed: return false
        }
    }

    /// Processes client-first (the data of SASLInitialResponse) and returns server-first
    /// (to send in AuthenticationSASLContinue).
    public mutating func receiveClientFirst(_ bytes: [UInt8]) throws(SCRAMError) -> [UInt8] {
        guard case .waitingForClientFirst = self.state else {
            self.state = .failed
            throw .unexpectedMessage
        }
        self.state = .failed
        var scanner = try SCRAMScanner(bytes)

        // gs2-header: cbind-flag "," [authzid] ","
        guard let flag = scanner.peek else { throw .invalidGS2Header }
        switch flag {
        case UInt8(ascii: "n"), UInt8(ascii: "y"):
            try scanner.expect(flag, else: .invalidGS2Header)
        case UInt8(ascii: "p"):
            throw .channelBindingNotSupported
        default:
            throw .invalidGS2Header
        }
        try scanner.expect(UInt8(ascii: ","), else: .invalidGS2Header)
        if scanner.peek == UInt8(ascii: "a") {
            throw .authorizationIdentityNotSupported
        }
        try scanner.expect(UInt8(ascii: ","), else: .invalidGS2Header)
        let bareStart = scanner.index

        // client-first-message-bare: [reserved-mext ","] username "," nonce ["," extensions]
        if scanner.peek == UInt8(ascii: "m") {
            throw .unsupportedMandatoryExtension
        }
        _ = try scanner.readAttribute("n")  // ignored, as in PostgreSQL
        let clientNonce = try scanner.readAttribute("r")
        guard SCRAM.isPrintable(clientNonce) else { throw .invalidNonce }
        while !scanner.isAtEnd {
            try scanner.skipAnyAttribute()
        }

        let combinedNonce = Array(clientNonce) + self.serverNonce
        var serverFirst = Array("r=".utf8)
        serverFirst += combinedNonce
        serverFirst += ",s=".utf8
        serverFirst += SCRAMBase64.encode(self.verifier.salt)
        serverFirst += ",i=\(self.verifier.iterations)".utf8

        self.state = .waitingForClientFinal(Exchange(
            gs2Header: Array(bytes[..<bareStart]),
            clientFirstBare: Array(bytes[bareStart...]),
            serverFirst: serverFirst,
            combinedNonce: combinedNonce
        ))
        return serverFirst
    }

    /// Processes client-final (the data of SASLResponse), checks the proof and returns
    /// server-final `v=...` (to send in AuthenticationSASLFinal, then AuthenticationOk).
    ///
    /// - Throws: ``SCRAMError/authenticationFailed`` for a wrong password, another case for a
    ///   malformed message.
    public mutating func receiveClientFinal(_ bytes: [UInt8]) throws(SCRAMError) -> [UInt8] {
        guard case .waitingForClientFinal(let exchange) = self.state else {
            self.state = .failed
            throw .unexpectedMessage
        }
        self.state = .failed
        var scanner = try SCRAMScanner(bytes)

        // client-final-message-without-proof: channel-binding "," nonce ["," extensions]
        let channelBinding = try scanner.readAttribute("c")
        guard let binding = SCRAMBase64.decode(channelBinding) else { throw .invalidBase64 }
        guard binding == exchange.gs2Header else { throw .channelBindingMismatch }
        let nonce = try scanner.readAttribute("r")
        guard constantTimeEquals(Array(nonce), exchange.combinedNonce) else { throw .nonceMismatch }
        while !scanner.isAtEnd && scanner.peek != UInt8(ascii: "p") {
            try scanner.skipAnyAttribute()
        }
        // The proof follows the last comma.
        guard !scanner.isAtEnd, scanner.index >= 1, bytes[scanner.index - 1] == UInt8(ascii: ",") else {
            throw .malformedAttribute(expected: "p")
        }
        let withoutProof = bytes[..<(scanner.index - 1)]
        let proofText = try scanner.readAttribute("p")
        guard scanner.isAtEnd else { throw .trailingData }
        guard let proof = SCRAMBase64.decode(proofText) else { throw .invalidBase64 }
        guard proof.count == 32 else { throw .invalidProofLength }

        var authMessage = exchange.clientFirstBare
        authMessage.append(UInt8(ascii: ","))
        authMessage += exchange.serverFirst
        authMessage.append(UInt8(ascii: ","))
        authMessage += withoutProof

        let clientSignature = SCRAM.hmac(key: self.verifier.storedKey, authMessage)
        let clientKey = SCRAM.xor(proof, clientSignature)
        guard constantTimeEquals(SCRAM.sha256(clientKey), self.verifier.storedKey) else {
            throw .authenticationFailed
        }
        let serverSignature = SCRAM.hmac(key: self.verifier.serverKey, authMessage)
        self.state = .completed
        return Array("v=".utf8) + SCRAMBase64.encode(serverSignature)
    }

    /// The state only, never key material.
    public var description: String {
        switch self.state {
        case .waitingForClientFirst: return "SCRAMServerSession(waitingForClientFirst)"
        case .waitingForClientFinal: return "SCRAMServerSession(waitingForClientFinal)"
        case .completed: return "SCRAMServerSession(completed)"
        case .failed: return "SCRAMServerSession(failed)"
        }
    }
}
