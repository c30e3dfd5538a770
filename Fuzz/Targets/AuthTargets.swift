import NIOCore
import PostgresWire

/// The client's side of password authentication, as the proxy's server side reads it.
enum AuthTargets {
    /// The RFC 7677 example: password `pencil`, this salt and 4096 iterations, and this server
    /// nonce, so that the RFC's client-final (in the seed corpus) authenticates.
    static let verifier = SCRAMVerifier.derive(
        password: "pencil", salt: [0x5B, 0x6D, 0x99, 0x68, 0x9D, 0x12, 0x35, 0x8E, 0xEC, 0xA0, 0x4B, 0x14, 0x12, 0x36, 0xFA, 0x81],
        iterations: 4096)
    static let serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    static let rfcClientFirstBare = Array("n=user,r=rOprNGfwEbeRWgbNEkqO".utf8)
    static let rfcClientFinalWithoutProof = Array("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".utf8)
    static let rfcServerFinal = Array("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".utf8)

    static let md5Salt: [UInt8] = [0x01, 0x02, 0x03, 0x04]
    static let md5Stored = PGMD5.storedHash(user: "app", password: "secret")

    /// The first byte picks what the rest is:
    /// - 0: a SCRAM exchange: client-first, then (after the first newline) client-final;
    /// - 1: a SASLInitialResponse body, whose data starts the exchange, then (after the body's
    ///   own end, as client-final) nothing: the parse and client-first;
    /// - 2: an md5 PasswordMessage response, checked against a stored hash;
    /// - 3: a stored SCRAM verifier (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`).
    static let scram: FuzzTargets.Target = { data in
        guard let mode = data.first else { return }
        let rest = Array(data.dropFirst())
        switch mode % 4 {
        case 0:
            let newline = rest.firstIndex(of: UInt8(ascii: "\n"))
            exchange(clientFirst: Array(rest[..<(newline ?? rest.count)]),
                     clientFinal: newline.map { Array(rest[($0 + 1)...]) })
        case 1:
            guard let initial = try? PGFrontend.SASLInitialResponse(ByteBuffer(bytes: rest)) else { return }
            exchange(clientFirst: initial.data.map { Array($0.readableBytesView) } ?? [], clientFinal: nil)
        case 2:
            let response = String(decoding: rest, as: UTF8.self)
            let expected = PGMD5.expectedResponse(storedHash: md5Stored, salt: md5Salt)
            let accepted = PGMD5.verify(clientResponse: response, storedHash: md5Stored, salt: md5Salt)
            FuzzCheck.require(accepted == (response == expected), "md5: verify(\(response)) = \(accepted), expected \(String(describing: expected))")
            // The input as a stored hash too (PostgreSQL's pg_authid form).
            if let other = PGMD5.expectedResponse(storedHash: response, salt: md5Salt) {
                FuzzCheck.require(PGMD5.verify(clientResponse: other, storedHash: response, salt: md5Salt),
                                  "md5: the expected response of \(response) is refused")
            } else {
                FuzzCheck.require(!PGMD5.verify(clientResponse: response, storedHash: response, salt: md5Salt),
                                  "md5: a malformed stored hash accepted a response")
            }
        default:
            let text = String(decoding: rest, as: UTF8.self)
            if let parsed = SCRAMVerifier(postgresFormat: text) {
                FuzzCheck.require(parsed.iterations >= 1 && parsed.storedKey.count == 32 && parsed.serverKey.count == 32,
                                  "verifier: \(parsed) parsed from \(text)")
                FuzzCheck.require(SCRAMVerifier(postgresFormat: parsed.postgresFormat) == parsed,
                                  "verifier: \(text) does not round-trip")
            }
        }
    }

    private static func exchange(clientFirst: [UInt8], clientFinal: [UInt8]?) {
        var session = SCRAMServerSession(verifier: verifier, nonce: serverNonce)
        let serverFirst: [UInt8]
        do {
            serverFirst = try session.receiveClientFirst(clientFirst)
        } catch {
            _ = String(describing: error)
            FuzzCheck.require(!session.isAuthenticated, "scram: authenticated after a bad client-first")
            // Every later message is refused.
            FuzzCheck.require((try? session.receiveClientFinal(clientFinal ?? [])) == nil, "scram: client-final accepted after an error")
            return
        }
        FuzzCheck.require(serverFirst.starts(with: Array("r=".utf8)), "scram: server-first \(serverFirst)")
        guard let clientFinal else { return }
        do {
            let serverFinal = try session.receiveClientFinal(clientFinal)
            FuzzCheck.require(session.isAuthenticated, "scram: server-final sent without authentication")
            if let gs2End = clientFirst.firstRange(of: Array(",,".utf8))?.upperBound,
               Array(clientFirst[gs2End...]) == rfcClientFirstBare,
               clientFinal.starts(with: rfcClientFinalWithoutProof + Array(",p=".utf8))
            {
                FuzzCheck.require(serverFinal == rfcServerFinal, "scram: the RFC 7677 exchange gave \(serverFinal)")
            }
        } catch {
            _ = String(describing: error)
            FuzzCheck.require(!session.isAuthenticated, "scram: authenticated after an error")
        }
        FuzzCheck.require((try? session.receiveClientFinal(clientFinal)) == nil, "scram: a second client-final accepted")
    }
}
