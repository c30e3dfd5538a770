import NIOCore
import XCTest

@testable import MySQLWire

/// Known-answer vectors computed with Python's hashlib (the formulas of the server's
/// `scramble()` and `generate_sha2_scramble()`); the captures check the native scramble against a
/// real server too (CaptureTests).
final class AuthenticationTests: XCTestCase {
    let countingNonce: [UInt8] = Array(1...20)
    let letterNonce: [UInt8] = Array("abcdefghijklmnopqrst".utf8)

    func testNativePasswordKnownAnswers() {
        XCTAssertEqual(
            MySQLAuthentication.nativePasswordScramble(password: "secret", nonce: self.countingNonce).hex,
            "b32bb3a583e1340c0a1108d58b1be49781ad8c2f"
        )
        XCTAssertEqual(
            MySQLAuthentication.nativePasswordScramble(password: "pässword", nonce: self.letterNonce).hex,
            "b6aee8c0bffcfce0688367927687201f2596afc6"
        )
        XCTAssertEqual(MySQLAuthentication.nativePasswordScramble(password: "", nonce: self.letterNonce), [])
        // A nonce passed with its trailing NUL gives the same scramble (only 20 bytes count).
        XCTAssertEqual(
            MySQLAuthentication.nativePasswordScramble(password: "secret", nonce: self.countingNonce + [0]).hex,
            "b32bb3a583e1340c0a1108d58b1be49781ad8c2f"
        )
    }

    func testNativeStoredHashIsWhatPasswordFunctionShows() {
        // SELECT PASSWORD('secret') = '*14E65567ABDB5135D0CFD9A70B3032C179A49EE7'
        XCTAssertEqual(MySQLAuthentication.nativePasswordStoredHash(password: "secret").hex, "14e65567abdb5135d0cfd9a70b3032c179a49ee7")
    }

    func testNativeVerification() {
        let response = MySQLAuthentication.nativePasswordScramble(password: "secret", nonce: self.letterNonce)
        XCTAssertTrue(MySQLAuthentication.verifyNativePassword(response: response, password: "secret", nonce: self.letterNonce))
        XCTAssertFalse(MySQLAuthentication.verifyNativePassword(response: response, password: "Secret", nonce: self.letterNonce))
        XCTAssertFalse(MySQLAuthentication.verifyNativePassword(response: response, password: "secret", nonce: self.countingNonce))
        XCTAssertFalse(MySQLAuthentication.verifyNativePassword(response: Array(response.dropLast()), password: "secret", nonce: self.letterNonce))
        XCTAssertFalse(MySQLAuthentication.verifyNativePassword(response: [], password: "secret", nonce: self.letterNonce))
        XCTAssertTrue(MySQLAuthentication.verifyNativePassword(response: [], password: "", nonce: self.letterNonce))

        let stored = MySQLAuthentication.nativePasswordStoredHash(password: "secret")
        XCTAssertTrue(MySQLAuthentication.verifyNativePassword(response: response, storedHash: stored, nonce: self.letterNonce))
        XCTAssertFalse(MySQLAuthentication.verifyNativePassword(response: response, storedHash: stored, nonce: self.countingNonce))
        XCTAssertFalse(MySQLAuthentication.verifyNativePassword(response: [], storedHash: stored, nonce: self.letterNonce))
        XCTAssertTrue(MySQLAuthentication.verifyNativePassword(response: [], storedHash: [], nonce: self.letterNonce))
    }

    func testCachingSHA2KnownAnswersAndVerification() {
        XCTAssertEqual(
            MySQLAuthentication.cachingSHA2Scramble(password: "secret", nonce: self.countingNonce).hex,
            "746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9"
        )
        XCTAssertEqual(
            MySQLAuthentication.cachingSHA2Scramble(password: "pässword", nonce: self.letterNonce).hex,
            "f8ff87710421e89cadca70a6ad4c567e6f1deeefe615068ddd56db0fcec9f54c"
        )
        XCTAssertEqual(MySQLAuthentication.cachingSHA2Scramble(password: "", nonce: self.letterNonce), [])
        let response = MySQLAuthentication.cachingSHA2Scramble(password: "secret", nonce: self.letterNonce)
        XCTAssertTrue(MySQLAuthentication.verifyCachingSHA2(response: response, password: "secret", nonce: self.letterNonce))
        XCTAssertFalse(MySQLAuthentication.verifyCachingSHA2(response: response, password: "secret!", nonce: self.letterNonce))
        XCTAssertFalse(MySQLAuthentication.verifyCachingSHA2(response: [], password: "secret", nonce: self.letterNonce))
    }

    func testRSARoundTripThroughTheProxysKeyPair() throws {
        let pair = try MySQLRSAKeyPair.generate()
        XCTAssertTrue(pair.publicKeyPEM.hasPrefix("-----BEGIN PUBLIC KEY-----\n"))
        XCTAssertTrue(pair.publicKeyPEM.hasSuffix("-----END PUBLIC KEY-----\n"))
        for password in ["secret", "", "pässwörd with spaces", String(repeating: "p", count: 200)] {
            let encrypted = try MySQLAuthentication.rsaEncryptPassword(password: password, nonce: self.letterNonce, publicKeyPEM: pair.publicKeyPEM)
            XCTAssertEqual(encrypted.count, 256)
            XCTAssertEqual(try pair.decryptPassword(encrypted, nonce: self.letterNonce), password)
            // Bound to the nonce: another connection's nonce does not recover it.
            XCTAssertThrowsError(try pair.decryptPassword(encrypted, nonce: self.countingNonce))
        }
        XCTAssertThrowsError(try pair.decryptPassword([1, 2, 3], nonce: self.letterNonce))
        XCTAssertThrowsError(
            try MySQLAuthentication.rsaEncryptPassword(password: String(repeating: "p", count: 214), nonce: self.letterNonce, publicKeyPEM: pair.publicKeyPEM)
        )
        XCTAssertThrowsError(try MySQLAuthentication.rsaEncryptPassword(password: "x", nonce: self.letterNonce, publicKeyPEM: "not a key"))
    }

    /// The obfuscation under RSA, checked against a hand computation.
    func testPasswordIsXoredWithTheRepeatedNonceIncludingItsNUL() {
        let nonce: [UInt8] = [1, 2, 3]
        XCTAssertEqual(MySQLAuthentication.xorWithNonce([0x61, 0x62, 0x63, 0x64, 0], nonce: nonce), [0x60, 0x60, 0x60, 0x65, 2])
    }

    func testNoncesArePrintableWithoutNULOrDollar() {
        var seen = Set<UInt8>()
        for _ in 0..<200 {
            let nonce = MySQLNonce.make()
            XCTAssertEqual(nonce.count, 20)
            for byte in nonce {
                XCTAssertTrue((1...127).contains(byte))
                XCTAssertNotEqual(byte, UInt8(ascii: "$"))
                seen.insert(byte)
            }
        }
        XCTAssertGreaterThan(seen.count, 100, "nonces should use most of the range")
        XCTAssertNotEqual(MySQLNonce.make(), MySQLNonce.make())
    }
}
