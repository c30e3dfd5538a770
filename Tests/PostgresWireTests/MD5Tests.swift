import PostgresWire
import Testing

@Suite struct MD5Tests {
    // Expected values computed independently with Python's hashlib:
    //   inner = md5(b"postgres" + b"postgres").hexdigest()
    //   "md5" + md5(inner.encode() + bytes([1, 2, 3, 4])).hexdigest()
    private let salt: [UInt8] = [0x01, 0x02, 0x03, 0x04]

    @Test func clientResponseMatchesKnownValue() {
        #expect(PGMD5.hashedPassword(user: "postgres", password: "postgres", salt: self.salt) == "md568be9ed08db75f318087ab337aaea044")
    }

    @Test func storedHashMatchesKnownValue() {
        #expect(PGMD5.storedHash(user: "postgres", password: "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d")
    }

    @Test func serverVerifiesAgainstStoredHash() {
        let stored = PGMD5.storedHash(user: "postgres", password: "postgres")
        #expect(PGMD5.expectedResponse(storedHash: stored, salt: self.salt) == "md568be9ed08db75f318087ab337aaea044")
        #expect(PGMD5.verify(clientResponse: "md568be9ed08db75f318087ab337aaea044", storedHash: stored, salt: self.salt))
        #expect(!PGMD5.verify(clientResponse: "md568be9ed08db75f318087ab337aaea045", storedHash: stored, salt: self.salt))
        #expect(!PGMD5.verify(clientResponse: "md568be9ed08db75f318087ab337aaea044", storedHash: stored, salt: [1, 2, 3, 5]))
        #expect(!PGMD5.verify(clientResponse: "", storedHash: stored, salt: self.salt))
        // The prefix, the length and every digit count; a wrong salt length never verifies.
        #expect(!PGMD5.verify(clientResponse: "md468be9ed08db75f318087ab337aaea044", storedHash: stored, salt: self.salt))
        #expect(!PGMD5.verify(clientResponse: "MD568be9ed08db75f318087ab337aaea044", storedHash: stored, salt: self.salt))
        #expect(!PGMD5.verify(clientResponse: "md568be9ed08db75f318087ab337aaea0440", storedHash: stored, salt: self.salt))
        #expect(!PGMD5.verify(clientResponse: "md568be9ed08db75f318087ab337aaea04", storedHash: stored, salt: self.salt))
        #expect(!PGMD5.verify(clientResponse: "md568BE9ED08DB75F318087AB337AAEA044", storedHash: stored, salt: self.salt))
        #expect(!PGMD5.verify(clientResponse: "md578be9ed08db75f318087ab337aaea044", storedHash: stored, salt: self.salt))
        #expect(!PGMD5.verify(clientResponse: "md568be9ed08db75f318087ab337aaea044", storedHash: stored, salt: [1, 2, 3]))
        let wrongPassword = PGMD5.hashedPassword(user: "postgres", password: "nope", salt: self.salt)
        #expect(!PGMD5.verify(clientResponse: wrongPassword, storedHash: stored, salt: self.salt))
    }

    @Test(arguments: ["", "md5", "3175bce1d3201d16594cebf9d7eb3f9d", "md53175BCE1D3201D16594CEBF9D7EB3F9D", "md53175bce1d3201d16594cebf9d7eb3f9dx", "md5zz75bce1d3201d16594cebf9d7eb3f9d"])
    func malformedStoredHashesNeverVerify(stored: String) {
        #expect(PGMD5.expectedResponse(storedHash: stored, salt: self.salt) == nil)
        #expect(!PGMD5.verify(clientResponse: "md568be9ed08db75f318087ab337aaea044", storedHash: stored, salt: self.salt))
    }
}
