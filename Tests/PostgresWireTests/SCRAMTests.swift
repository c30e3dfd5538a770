@testable import PostgresWire
import ConciergeRandom
import Testing

private func bytes(_ string: String) -> [UInt8] { Array(string.utf8) }
private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

/// RFC 7677 section 3. (The server signature is the RFC's; it is also what Python's hashlib
/// and hmac compute, and what ongres/scram, used by pgJDBC, tests against.)
private enum RFC7677 {
    static let clientNonce = "rOprNGfwEbeRWgbNEkqO"
    static let serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    static let clientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    static let serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    static let clientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    static let serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    static let salt = SCRAMBase64.decode("W22ZaJ0SNY7soEsUEjb6gQ==".utf8)!
    static let verifier = SCRAMVerifier.derive(password: "pencil", salt: salt, iterations: 4096)
}

@Suite struct SCRAMClientTests {
    @Test func rfc7677TestVector() throws {
        var client = SCRAMClientSession(username: "user", password: "pencil", nonce: RFC7677.clientNonce)
        #expect(text(client.clientFirstMessage()) == RFC7677.clientFirst)
        #expect(text(try client.receiveServerFirst(bytes(RFC7677.serverFirst))) == RFC7677.clientFinal)
        try client.verifyServerFinal(bytes(RFC7677.serverFinal))
    }

    @Test func defaultUsernameIsEmptyAndNonceIsRandom() {
        var first = SCRAMClientSession(password: "p")
        var second = SCRAMClientSession(password: "p")
        let message = text(first.clientFirstMessage())
        #expect(message.hasPrefix("n,,n=,r="))
        #expect(message.count == "n,,n=,r=".count + 24)
        #expect(message != text(second.clientFirstMessage()))
    }

    @Test func usernameIsEscaped() {
        var client = SCRAMClientSession(username: "a,b=c", password: "p", nonce: "abc")
        #expect(text(client.clientFirstMessage()) == "n,,n=a=2Cb=3Dc,r=abc")
    }

    @Test func rejectsBadServerFinal() throws {
        var client = SCRAMClientSession(username: "user", password: "pencil", nonce: RFC7677.clientNonce)
        _ = client.clientFirstMessage()
        _ = try client.receiveServerFirst(bytes(RFC7677.serverFirst))
        #expect(throws: SCRAMError.serverSignatureMismatch) {
            try client.verifyServerFinal(bytes("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
        }
        #expect(throws: SCRAMError.serverError("invalid-proof")) { try client.verifyServerFinal(bytes("e=invalid-proof")) }
        #expect(throws: SCRAMError.invalidBase64) { try client.verifyServerFinal(bytes("v=!!!!")) }
        #expect(throws: SCRAMError.malformedAttribute(expected: "v")) { try client.verifyServerFinal(bytes("x")) }
        #expect(throws: SCRAMError.malformedAttribute(expected: "v")) { try client.verifyServerFinal([]) }
    }

    @Test(arguments: [
        ("r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", SCRAMError.nonceMismatch),
        ("r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", .nonceMismatch),  // no server part
        ("r=rOprNGfwEbeRWgbNEkqO\u{7F},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", .invalidNonce),
        ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096", .invalidBase64),
        ("r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096", .invalidSalt),
        ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", .invalidIterationCount),
        ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", .invalidIterationCount),
        ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999", .invalidIterationCount),
        ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,", .malformedAttribute(expected: "?")),
        ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==", .malformedAttribute(expected: "i")),
        ("m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1", .unsupportedMandatoryExtension),
        ("s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOxyz,i=1", .malformedAttribute(expected: "r")),
        ("r=rOprNGfwEbeRWgbNEkqOxyz\0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1", .invalidEncoding),
        ("", .malformedAttribute(expected: "r")),
    ])
    func rejectsMalformedServerFirst(message: String, expected: SCRAMError) {
        var client = SCRAMClientSession(password: "pencil", nonce: RFC7677.clientNonce)
        _ = client.clientFirstMessage()
        #expect(throws: expected) { try client.receiveServerFirst(bytes(message)) }
        // The exchange is over after an error.
        #expect(throws: SCRAMError.unexpectedMessage) { try client.receiveServerFirst(bytes(RFC7677.serverFirst)) }
    }

    @Test func enforcesMessageOrder() throws {
        var client = SCRAMClientSession(password: "pencil", nonce: RFC7677.clientNonce)
        #expect(throws: SCRAMError.unexpectedMessage) { try client.receiveServerFirst(bytes(RFC7677.serverFirst)) }
        var fresh = SCRAMClientSession(password: "pencil", nonce: RFC7677.clientNonce)
        #expect(throws: SCRAMError.unexpectedMessage) { try fresh.verifyServerFinal(bytes(RFC7677.serverFinal)) }
        _ = fresh.clientFirstMessage()
        #expect(throws: SCRAMError.unexpectedMessage) { try fresh.verifyServerFinal(bytes(RFC7677.serverFinal)) }
    }

    @Test func allowsServerExtensions() throws {
        var client = SCRAMClientSession(username: "user", password: "pencil", nonce: RFC7677.clientNonce)
        _ = client.clientFirstMessage()
        _ = try client.receiveServerFirst(bytes(RFC7677.serverFirst))
        try client.verifyServerFinal(bytes(RFC7677.serverFinal + ",x=future"))
    }
}

@Suite struct SCRAMServerTests {
    @Test func rfc7677TestVectorFromTheServerSide() throws {
        var server = SCRAMServerSession(verifier: RFC7677.verifier, nonce: RFC7677.serverNonce)
        #expect(text(try server.receiveClientFirst(bytes(RFC7677.clientFirst))) == RFC7677.serverFirst)
        #expect(!server.isAuthenticated)
        #expect(text(try server.receiveClientFinal(bytes(RFC7677.clientFinal))) == RFC7677.serverFinal)
        #expect(server.isAuthenticated)
        #expect(throws: SCRAMError.unexpectedMessage) { try server.receiveClientFinal(bytes(RFC7677.clientFinal)) }
    }

    @Test func clientAndServerAgree() throws {
        let verifier = SCRAMVerifier.derive(password: "correct horse", iterations: 4096)
        #expect(verifier.salt.count == 16)
        var server = SCRAMServerSession(verifier: verifier)
        var client = SCRAMClientSession(password: "correct horse")
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage())
        let serverFinal = try server.receiveClientFinal(try client.receiveServerFirst(serverFirst))
        try client.verifyServerFinal(serverFinal)
        #expect(server.isAuthenticated)
    }

    @Test func wrongPasswordFails() throws {
        let verifier = SCRAMVerifier.derive(password: "right", iterations: 4096)
        var server = SCRAMServerSession(verifier: verifier)
        var client = SCRAMClientSession(password: "wrong")
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage())
        let clientFinal = try client.receiveServerFirst(serverFirst)
        #expect(throws: SCRAMError.authenticationFailed) { try server.receiveClientFinal(clientFinal) }
        #expect(!server.isAuthenticated)
    }

    @Test func clientDetectsServerThatDoesNotKnowThePassword() throws {
        // A server holding a verifier for another password cannot produce a valid signature.
        let impostor = SCRAMVerifier.derive(password: "other", salt: RFC7677.salt, iterations: 4096)
        var client = SCRAMClientSession(username: "user", password: "pencil", nonce: RFC7677.clientNonce)
        var server = SCRAMServerSession(verifier: RFC7677.verifier, nonce: RFC7677.serverNonce)
        let clientFinal = try client.receiveServerFirst(server.receiveClientFirst(client.clientFirstMessage()))
        let genuineFinal = try server.receiveClientFinal(clientFinal)
        #expect(impostor.serverKey != RFC7677.verifier.serverKey)
        var forged = genuineFinal
        forged[5] ^= 1
        #expect(throws: SCRAMError.self) { try client.verifyServerFinal(forged) }
        try client.verifyServerFinal(genuineFinal)
    }

    @Test func acceptsClientsThatSupportButDoNotUseChannelBinding() throws {
        // "y,,": the client supports channel binding but thinks the server does not.
        var server = SCRAMServerSession(verifier: RFC7677.verifier, nonce: RFC7677.serverNonce)
        _ = try server.receiveClientFirst(bytes("y,,n=user,r=" + RFC7677.clientNonce))
        // c= must then repeat "y,," (eSws), so the RFC's "biws" is rejected.
        #expect(throws: SCRAMError.channelBindingMismatch) { try server.receiveClientFinal(bytes(RFC7677.clientFinal)) }
    }

    @Test(arguments: [
        ("p=tls-server-end-point,,n=,r=abc", SCRAMError.channelBindingNotSupported),
        ("n,a=admin,n=,r=abc", .authorizationIdentityNotSupported),
        ("n,,m=ext,n=,r=abc", .unsupportedMandatoryExtension),
        ("x,,n=,r=abc", .invalidGS2Header),
        ("n,n=,r=abc", .invalidGS2Header),
        ("n", .invalidGS2Header),
        ("", .invalidGS2Header),
        ("n,,r=abc", .malformedAttribute(expected: "n")),
        ("n,,n=user", .malformedAttribute(expected: "r")),
        ("n,,n=user,r=", .invalidNonce),
        ("n,,n=user,r=a\u{7F}", .invalidNonce),
        ("n,,n=user,r=é", .invalidNonce),
        ("n,,n=user,r=abc,", .malformedAttribute(expected: "?")),
        ("n,,n=user,r=abc,1=x", .malformedAttribute(expected: "?")),
        ("n,,n=us\0er,r=abc", .invalidEncoding),
    ])
    func rejectsMalformedClientFirst(message: String, expected: SCRAMError) {
        var server = SCRAMServerSession(verifier: RFC7677.verifier)
        #expect(throws: expected) { try server.receiveClientFirst(bytes(message)) }
        #expect(throws: SCRAMError.unexpectedMessage) { try server.receiveClientFirst(bytes(RFC7677.clientFirst)) }
    }

    @Test func acceptsClientFirstExtensions() throws {
        var server = SCRAMServerSession(verifier: RFC7677.verifier, nonce: RFC7677.serverNonce)
        #expect(text(try server.receiveClientFirst(bytes(RFC7677.clientFirst + ",x=1"))) == RFC7677.serverFirst)
    }

    private static let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    private static let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="

    @Test(arguments: [
        ("c=biws,r=\(nonce)x,p=\(proof)", SCRAMError.nonceMismatch),
        ("c=biws,r=rOprNGfwEbeRWgbNEkqO,p=\(proof)", .nonceMismatch),
        ("c=eSws,r=\(nonce),p=\(proof)", .channelBindingMismatch),
        ("c=bi,r=\(nonce),p=\(proof)", .invalidBase64),
        ("r=\(nonce),p=\(proof)", .malformedAttribute(expected: "c")),
        ("c=biws,p=\(proof)", .malformedAttribute(expected: "r")),
        ("c=biws,r=\(nonce)", .malformedAttribute(expected: "p")),
        ("c=biws,r=\(nonce),", .malformedAttribute(expected: "?")),
        ("c=biws,r=\(nonce),p=\(proof),", .trailingData),
        ("c=biws,r=\(nonce),p=\(proof),x=1", .trailingData),
        ("c=biws,r=\(nonce),p=AAAA", .invalidProofLength),
        ("c=biws,r=\(nonce),p=%%%%", .invalidBase64),
        ("c=biws,r=\(nonce),p=\("A" + proof.dropFirst())", .authenticationFailed),
        ("c=biws,r=\(nonce),p=", .invalidProofLength),
        ("c=biws,r=\(nonce),p=\(proof)\0", .invalidEncoding),
    ])
    func rejectsMalformedClientFinal(message: String, expected: SCRAMError) throws {
        var server = SCRAMServerSession(verifier: RFC7677.verifier, nonce: RFC7677.serverNonce)
        _ = try server.receiveClientFirst(bytes(RFC7677.clientFirst))
        #expect(throws: expected) { try server.receiveClientFinal(bytes(message)) }
        #expect(!server.isAuthenticated)
        #expect(throws: SCRAMError.unexpectedMessage) { try server.receiveClientFinal(bytes(RFC7677.clientFinal)) }
    }

    @Test func acceptsClientFinalExtensionsBeforeTheProof() throws {
        // The extension is part of client-final-without-proof, so the RFC proof no longer
        // matches: this checks parsing reaches the proof, not that it verifies.
        var server = SCRAMServerSession(verifier: RFC7677.verifier, nonce: RFC7677.serverNonce)
        _ = try server.receiveClientFirst(bytes(RFC7677.clientFirst))
        #expect(throws: SCRAMError.authenticationFailed) {
            try server.receiveClientFinal(bytes("c=biws,r=\(Self.nonce),x=1,p=\(Self.proof)"))
        }
    }

    @Test func clientFinalBeforeClientFirstIsRejected() {
        var server = SCRAMServerSession(verifier: RFC7677.verifier)
        #expect(throws: SCRAMError.unexpectedMessage) { try server.receiveClientFinal(bytes(RFC7677.clientFinal)) }
    }

    @Test func randomInputNeverTraps() {
        var generator = SeededGenerator(seed: 99)
        let alphabet = bytes("nyrcpsiva=,,,biws0123+/")
        for _ in 0..<2000 {
            let length = Int.random(in: 0...40, using: &generator)
            let message = (0..<length).map { _ in alphabet.randomElement(using: &generator)! }
            var server = SCRAMServerSession(verifier: RFC7677.verifier, nonce: "n")
            if (try? server.receiveClientFirst(message)) == nil {
                _ = try? server.receiveClientFirst(bytes(RFC7677.clientFirst))
            }
            _ = try? server.receiveClientFinal(message)
            var client = SCRAMClientSession(password: "p", nonce: "r")
            _ = client.clientFirstMessage()
            _ = try? client.receiveServerFirst(message)
            _ = try? client.verifyServerFinal(message)
        }
    }
}

@Suite struct SCRAMPrimitiveTests {
    @Test func pbkdf2MatchesKnownVectors() {
        // Values from Python's hashlib.pbkdf2_hmac("sha256", b"password", b"salt", n).
        let one = SCRAM.saltedPassword(password: bytes("password"), salt: bytes("salt"), iterations: 1)
        #expect(hex(one) == "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b")
        let many = SCRAM.saltedPassword(password: bytes("password"), salt: bytes("salt"), iterations: 4096)
        #expect(hex(many) == "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a")
    }

    @Test(arguments: [1, 2, 3, 4096])
    func fallbackPBKDF2MatchesBoringSSL(iterations: Int) {
        let salt: [UInt8] = [1, 2, 3, 4, 5]
        #expect(SCRAM.pbkdf2Fallback(password: bytes("pencil"), salt: salt, iterations: iterations)
            == SCRAM.saltedPassword(password: bytes("pencil"), salt: salt, iterations: iterations))
    }

    @Test func verifierMatchesPostgresStoredFormat() throws {
        // Computed with Python (hashlib.pbkdf2_hmac + hmac) for password "secret".
        let stored = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:VpYlBuxyzeCI1KnctrefdljpB1mk3Gp7sBI/t11+NkQ="
        let derived = SCRAMVerifier.derive(password: "secret", salt: bytes("0123456789abcdef"))
        #expect(derived.postgresFormat == stored)
        #expect(SCRAMVerifier(postgresFormat: stored) == derived)
        #expect(!derived.description.contains("bpSY"))
    }

    @Test(arguments: [
        "", "md5abc", "SCRAM-SHA-256$4096:MDEy$bpSY", "SCRAM-SHA-1$4096:MDEy$AAAA:AAAA",
        "SCRAM-SHA-256$0:MDEyMzQ1Njc4OWFiY2RlZg==$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:VpYlBuxyzeCI1KnctrefdljpB1mk3Gp7sBI/t11+NkQ=",
        "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$AAAA:VpYlBuxyzeCI1KnctrefdljpB1mk3Gp7sBI/t11+NkQ=",
        "SCRAM-SHA-256$4096:$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:VpYlBuxyzeCI1KnctrefdljpB1mk3Gp7sBI/t11+NkQ=",
    ])
    func rejectsMalformedStoredVerifiers(stored: String) {
        #expect(SCRAMVerifier(postgresFormat: stored) == nil)
    }

    @Test func base64RoundTripsAndIsStrict() {
        for length in 0..<10 {
            let input = (0..<length).map { UInt8($0 * 37 & 0xFF) }
            #expect(SCRAMBase64.decode(SCRAMBase64.encode(input)) == input)
        }
        #expect(SCRAMBase64.encodeString(bytes("n,,")) == "biws")
        #expect(SCRAMBase64.encodeString(bytes("ab")) == "YWI=")
        #expect(SCRAMBase64.decode(bytes("YWI=")) == bytes("ab"))
        for invalid in ["YWI", "YW=I", "Y===", "YWI=YWI=", "YW I", "YW\u{0}=", "====", "YWI-"] {
            #expect(SCRAMBase64.decode(bytes(invalid)) == nil, "\(invalid)")
        }
    }

    @Test func saltedPasswordCacheComputesOnce() throws {
        let cache = SCRAMSaltedPasswordCache(maximumEntries: 2)
        for _ in 0..<3 {
            var client = SCRAMClientSession(username: "user", password: "pencil", nonce: RFC7677.clientNonce, saltedPasswordCache: cache)
            _ = client.clientFirstMessage()
            #expect(text(try client.receiveServerFirst(bytes(RFC7677.serverFirst))) == RFC7677.clientFinal)
        }
        #expect(cache.count == 1)
        _ = cache.saltedPassword(password: bytes("a"), salt: [1], iterations: 1)
        _ = cache.saltedPassword(password: bytes("b"), salt: [1], iterations: 1)  // full: emptied first
        #expect(cache.count == 1)
        cache.removeAll()
        #expect(cache.count == 0)
    }

    @Test func cacheIsSafeUnderConcurrency() async {
        let cache = SCRAMSaltedPasswordCache()
        let expected = SCRAM.saltedPassword(password: bytes("pw"), salt: [9], iterations: 100)
        await withTaskGroup(of: [UInt8].self) { group in
            for _ in 0..<8 {
                group.addTask { cache.saltedPassword(password: bytes("pw"), salt: [9], iterations: 100) }
            }
            for await result in group {
                #expect(result == expected)
            }
        }
        #expect(cache.count == 1)
    }

    @Test func descriptionsHideSecrets() {
        let client = SCRAMClientSession(password: "hunter2")
        #expect(!client.description.contains("hunter2"))
        #expect(!String(describing: SCRAMError.authenticationFailed).isEmpty)
    }

    private func hex(_ bytes: [UInt8]) -> String {
        bytes.map { byte in
            let digits = Array("0123456789abcdef")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
        }.joined()
    }
}

@Suite struct SecureRandomTests {
    @Test func givesTheRequestedCountAndVaries() {
        for count in [0, 1, 4, 7, 8, 9, 16, 18, 33] {
            #expect(SecureRandom.bytes(count).count == count)
        }
        #expect(SecureRandom.bytes(16) != SecureRandom.bytes(16))
    }
}
