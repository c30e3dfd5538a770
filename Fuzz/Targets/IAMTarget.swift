import ConciergeAWS
import Foundation

/// IAM authentication tokens (`aws rds generate-db-auth-token`), which a client sends as its
/// password.
enum IAMTarget {
    static let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    static let credentials = AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: secret)
    static let date = Date(timeIntervalSince1970: 1_700_000_000)

    /// An input whose first byte is 0x01 is a generator: host, user and region (from fixed
    /// alphabets), port, date offset and lifetime chosen by the rest; the token
    /// `RDSAuthToken.generate` makes must parse and verify with the same key (a property).
    /// Any other input is a token as a client sends it: `RDSAuthToken.parse`, then, for one that
    /// parses, `verify` against its own host, port, user and region with a fixed key and clock
    /// (which exercises the signature path; it almost always fails with badSignature).
    static let iamToken: FuzzTargets.Target = { data in
        if data.first == 0x01 {
            generated(FuzzReader(Array(data.dropFirst())))
            return
        }
        let text = String(decoding: data, as: UTF8.self)
        let token: RDSAuthToken
        do {
            token = try RDSAuthToken.parse(text)
        } catch {
            _ = String(describing: error)
            return
        }
        _ = token.description
        _ = token.expiresAt
        FuzzCheck.require((1...65535).contains(token.port) && !token.hostname.isEmpty && !token.user.isEmpty
                          && token.signature.utf8.count == 64, "iam: parsed \(token)")
        do {
            let identity = try RDSAuthToken.verify(
                token: text, expectedHosts: [token.hostname], expectedPort: token.port, expectedUser: token.user,
                region: token.region, now: token.signedAt, secretKey: { _ in secret })
            _ = identity.description
        } catch {
            _ = String(describing: error)
        }
    }

    private static func generated(_ reader: FuzzReader) {
        var reader = reader
        func text(_ alphabet: String, minimum: Int) -> String {
            let letters = Array(alphabet)
            var out = String(reader.run(maximum: 24).map { letters[Int($0) % letters.count] })
            while out.count < minimum { out.append(letters[out.count % letters.count]) }
            return out
        }
        let hostname: String
        switch reader.choice(3) {
        case 0: hostname = text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-", minimum: 1)
        case 1: hostname = "\(reader.byte()).\(reader.byte()).\(reader.byte()).\(reader.byte())"
        default: hostname = text("0123456789abcdef:", minimum: 2)  // IPv6-ish: written in brackets
        }
        let user = text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.@+=&/?%# äé中😀", minimum: 1)
        let region = text("abcdefghijklmnopqrstuvwxyz0123456789-", minimum: 1)
        let port = [5432, 443, 1, 65535, 6432][reader.choice(5)]
        let expiresIn = 1 + reader.choice(900)
        let token: String
        do {
            token = try RDSAuthToken.generate(
                hostname: hostname, port: port, username: user, region: region, credentials: credentials, date: date,
                expiresIn: expiresIn)
        } catch {
            // (The message is built first: an autoclosure over the typed error crashes the
            // Swift 6.3 optimizer.)
            let message = "iam: generate(\(hostname), \(port), \(user), \(region)) threw \(String(describing: error))"
            FuzzCheck.fail(message)
        }
        do {
            let identity = try RDSAuthToken.verify(
                token: token, expectedHosts: [hostname], expectedPort: port, expectedUser: user, region: region,
                now: date.addingTimeInterval(Double(expiresIn) / 2), secretKey: { $0 == credentials.accessKeyID ? secret : nil })
            FuzzCheck.require(identity.user == user && identity.accessKeyID == credentials.accessKeyID,
                              "iam: \(token) verified as \(identity)")
        } catch {
            let message = "iam: the generated token \(token) does not verify: \(String(describing: error))"
            FuzzCheck.fail(message)
        }
    }
}
