import ConciergeAuth
import NIOCore
import PostgresWire
import ProxyCore

/// A PostgreSQL client's login, from its first packet to AuthenticationOk, as a pure state
/// machine: SSLRequest, CancelRequest, the startup packet and its parameters, the auth policy
/// (TLS, the client limit, IAM), then SCRAM-SHA-256, md5 or an IAM token.
///
/// The session handler feeds it the client's packets and runs what it returns (write these
/// bytes, start TLS, check a token, fail); after `.authenticated` the handler logs the client in
/// (ParameterStatus, BackendKeyData, ReadyForQuery) with `user`, `database` and `parameters`.
public struct ClientLogin {
    public enum State {
        /// Waiting for the startup packet (possibly after answering SSLRequest/GSSENCRequest).
        case awaitingStartup
        case scram(SCRAMServerSession, step: Int)
        case md5(salt: [UInt8])
        /// Asked for the password in clear (over TLS): an IAM authentication token.
        case iam
        /// A token is being checked (`.checkIAMToken`).
        case checkingIAMToken
        /// AuthenticationOk was sent: the client is the user it claims.
        case authenticated
        /// The connection carried a CancelRequest, or the login failed: nothing more is read.
        case done
    }

    /// What the runtime says when the startup packet arrives.
    public struct Environment {
        public var policy: AuthPolicy
        public var clientLimitExceeded: Bool
        public var users: PostgresUsers
        /// Four random bytes, for an md5 challenge.
        public var md5Salt: () -> [UInt8]

        public init(policy: AuthPolicy, clientLimitExceeded: Bool, users: PostgresUsers, md5Salt: @escaping () -> [UInt8]) {
            self.policy = policy
            self.clientLimitExceeded = clientLimitExceeded
            self.users = users
            self.md5Salt = md5Salt
        }
    }

    /// Why a login failed, for the handler's metrics and log (the client sees only the error).
    public enum FailedAuthentication: Equatable, Sendable {
        /// `require_tls` and a plaintext client (counted, not logged).
        case tlsRequired
        /// `iam_auth: REQUIRED` and a plaintext client.
        case iamWithoutTLS
        /// Unknown user or wrong password: the same answer for both.
        case wrongPassword
        /// The IAM token was refused (the reason is logged only).
        case iamTokenRefused(reason: String)
    }

    public enum Action {
        /// Nothing to do (wait for more bytes).
        case none
        /// Answer an SSLRequest or GSSENCRequest: `S` and then TLS, or `N`.
        case answerEncryptionRequest(acceptTLS: Bool)
        /// The connection carries a CancelRequest: route it, then close.
        case cancel(processID: Int32, secretKey: Int32)
        /// An authentication request or continuation for the client.
        case write(ByteBuffer)
        /// Check this IAM token, then report with `iamTokenChecked`.
        case checkIAMToken(String)
        /// AuthenticationOk (after SASLFinal, for SCRAM): write it, then log the client in.
        case authenticated(ByteBuffer)
        /// Send this error and close. `failedAuthentication`: counted in
        /// ClientConnectionsSetupFailedAuth.
        case fail(PGErrorFields, failedAuthentication: FailedAuthentication?)
    }

    public private(set) var state: State = .awaitingStartup
    /// The client negotiated TLS (SSLRequest answered `S`).
    public private(set) var isTLS = false
    /// From the startup packet (`database` defaults to the user's name).
    public private(set) var user = ""
    public private(set) var database = ""
    /// Session parameters the client asked for (lowercased name → value), the `options`
    /// parameter's `-c` settings included (the packet's own parameters win).
    public private(set) var parameters: [String: String] = [:]
    /// The user's entry (nil for an unknown user), until `forgetCredentials`.
    public private(set) var userEntry: PostgresUsers.Entry?

    public init() {}

    // MARK: Events

    /// The packet before the startup: `trailingBytes` are bytes the client sent after it in the
    /// same read. `tlsAvailable`: the proxy has a certificate (asked only for an SSLRequest: the
    /// runtime reads it under a lock).
    public mutating func packetReceived(
        _ packet: StartupPacket, trailingBytes: Int, tlsAvailable: @autoclosure () -> Bool, environment: @autoclosure () -> Environment
    ) -> Action {
        guard case .awaitingStartup = state else { return .none }
        switch packet {
        case .sslRequest, .gssEncRequest:
            // A client must wait for our answer before sending more: bytes already here would be
            // read as if they came through an encrypted channel (the CVE-2021-23214 class).
            guard trailingBytes == 0 else {
                return fail(ClientErrors.protocolViolation("received unencrypted data after SSL request"))
            }
            guard !isTLS else {
                return fail(ClientErrors.protocolViolation("SSL request received on an encrypted connection"))
            }
            if case .sslRequest = packet, tlsAvailable() {
                isTLS = true
                return .answerEncryptionRequest(acceptTLS: true)
            }
            return .answerEncryptionRequest(acceptTLS: false)
        case .cancel(let processID, let secretKey):
            // Nothing else may come on this connection; it closes once the cancel is delivered.
            state = .done
            return .cancel(processID: processID, secretKey: secretKey)
        case .startup(let version, let parameters):
            return startup(version: version, parameters: parameters, environment: environment())
        }
    }

    /// TLS could not be started after `S` was sent.
    public mutating func tlsFailed() {
        state = .done
    }

    /// A message during authentication (a PasswordMessage, SASLInitialResponse or SASLResponse).
    public mutating func messageReceived(_ frame: PGFrame) -> Action {
        switch state {
        case .scram, .md5, .iam: break
        case .awaitingStartup, .checkingIAMToken, .authenticated, .done: return .none
        }
        guard frame.type == PGMessageType.Frontend.password else {
            return fail(ClientErrors.protocolViolation("expected password response, got message type \(frame.type)"))
        }
        do {
            return try authenticationMessage(frame.body)
        } catch {
            return fail(ClientErrors.protocolError(error))
        }
    }

    /// The runtime's verdict on the token of `.checkIAMToken`.
    public mutating func iamTokenChecked(allowed: Bool, reason: String) -> Action {
        guard case .checkingIAMToken = state else { return .none }
        guard allowed else {
            return fail(ClientErrors.iamAuthenticationFailed(user: user), failedAuthentication: .iamTokenRefused(reason: reason))
        }
        return authenticated(Self.messageBuffer())
    }

    /// The login is complete: the user's keys are no longer needed in memory.
    public mutating func forgetCredentials() {
        userEntry = nil
    }

    // MARK: Steps

    /// `name.lowercased()`, without building a new string when it is lowercase already (drivers
    /// send lowercase names: `lowercased()` cost about 650 instructions per login).
    private static func lowercased(_ name: String) -> String {
        name.utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") || $0 >= 0x80 }) ? name.lowercased() : name
    }

    private mutating func startup(version: UInt32, parameters startup: [StartupParameter], environment: Environment) -> Action {
        guard version >> 16 == 3 else { return fail(ClientErrors.unsupportedProtocol(version)) }
        var unsupportedOptions: [String] = []
        // PostgreSQL applies `options` first and the packet's own parameters after it, so a
        // parameter given both ways takes the packet's value.
        var fromOptions: [(String, String)] = []
        for parameter in startup {
            switch parameter.name {
            case "user": user = parameter.value
            case "database": database = parameter.value
            case "replication":
                if !["false", "off", "no", "0"].contains(parameter.value.lowercased()) {
                    return fail(ClientErrors.replicationUnsupported)
                }
            case "options":
                do {
                    fromOptions += try Self.parseOptions(parameter.value)
                } catch {
                    return fail(ClientErrors.unsupportedStartupOption(parameter.value))
                }
            default:
                if parameter.name.hasPrefix("_pq_.") {
                    unsupportedOptions.append(parameter.name)
                } else {
                    parameters[Self.lowercased(parameter.name)] = parameter.value
                }
            }
        }
        for (name, value) in fromOptions where parameters[name.lowercased()] == nil {
            parameters[name.lowercased()] = value
        }
        guard !user.isEmpty else { return fail(ClientErrors.noUser) }
        if database.isEmpty { database = user }
        userEntry = environment.users.entry(for: user)
        let admission = environment.policy.admit(
            clientUsesTLS: isTLS, clientLimitExceeded: environment.clientLimitExceeded,
            iamRequired: userEntry?.iamRequired ?? false)
        var out = Self.messageBuffer()
        switch admission {
        case .refuse(let error, let countsAsFailedAuth):
            let failure: FailedAuthentication? = !countsAsFailedAuth ? nil : error == .iamRequiresTLS ? .iamWithoutTLS : .tlsRequired
            return fail(ClientErrors.rendered(error), failedAuthentication: failure)
        case .iamToken, .password:
            break
        }
        if version & 0xFFFF > 0 || !unsupportedOptions.isEmpty {
            PGEncode.negotiateProtocolVersion(newestMinorVersion: 0, unsupportedOptions: unsupportedOptions, into: &out)
        }
        if admission == .iamToken {
            PGEncode.authenticationCleartextPassword(into: &out)
            state = .iam
        } else if let entry = userEntry, entry.authType == .postgresMD5 {
            let salt = environment.md5Salt()
            PGEncode.authenticationMD5Password(salt: salt, into: &out)
            state = .md5(salt: salt)
        } else {
            // Unknown users get the same exchange as known ones, against a verifier no password
            // matches, so a probe cannot tell them apart.
            let verifier = userEntry?.scram ?? environment.users.mockVerifier(for: user)
            PGEncode.authenticationSASL(mechanisms: ["SCRAM-SHA-256"], into: &out)
            state = .scram(SCRAMServerSession(verifier: verifier), step: 1)
        }
        return .write(out)
    }

    private mutating func authenticationMessage(_ body: ByteBuffer) throws(PGWireError) -> Action {
        var out = Self.messageBuffer()
        switch state {
        case .md5(let salt):
            let response = try PGFrontend.PasswordMessage(body).string
            guard let entry = userEntry, PGMD5.verify(clientResponse: response, storedHash: entry.md5StoredHash, salt: salt)
            else {
                return wrongPassword()
            }
        case .scram(var session, let step):
            do {
                if step == 1 {
                    let initial = try PGFrontend.SASLInitialResponse(body)
                    guard initial.mechanism.readableBytesView.elementsEqual("SCRAM-SHA-256".utf8) else {
                        return fail(ClientErrors.protocolViolation("client selected an invalid SASL authentication mechanism"))
                    }
                    guard let data = initial.data else {
                        return fail(ClientErrors.protocolViolation("malformed SCRAM message (empty message)"))
                    }
                    let serverFirst = try session.receiveClientFirst(Array(data.readableBytesView))
                    state = .scram(session, step: 2)
                    PGEncode.authenticationSASLContinue(data: serverFirst, into: &out)
                    return .write(out)
                }
                let response = PGFrontend.SASLResponse(body)
                let serverFinal = try session.receiveClientFinal(Array(response.data.readableBytesView))
                guard userEntry != nil else { return wrongPassword() }
                PGEncode.authenticationSASLFinal(data: serverFinal, into: &out)
            } catch SCRAMError.authenticationFailed {
                return wrongPassword()
            } catch let error as PGWireError {
                throw error
            } catch {
                return fail(ClientErrors.protocolViolation("malformed SCRAM message"))
            }
        case .iam:
            let token = try PGFrontend.PasswordMessage(body).string
            state = .checkingIAMToken
            return .checkIAMToken(token)
        case .awaitingStartup, .checkingIAMToken, .authenticated, .done:
            return .none
        }
        return authenticated(out)
    }

    /// A buffer for the login's answers, with room for them: an empty `ByteBuffer()` grew (a
    /// reallocation) at its first write, once per step of every login.
    private static func messageBuffer() -> ByteBuffer {
        ByteBufferAllocator().buffer(capacity: 64)
    }

    private mutating func authenticated(_ out: ByteBuffer) -> Action {
        var out = out
        PGEncode.authenticationOk(into: &out)
        state = .authenticated
        return .authenticated(out)
    }

    private mutating func wrongPassword() -> Action {
        fail(ClientErrors.authenticationFailed(user: user), failedAuthentication: .wrongPassword)
    }

    private mutating func fail(_ fields: PGErrorFields, failedAuthentication: FailedAuthentication? = nil) -> Action {
        state = .done
        return .fail(fields, failedAuthentication: failedAuthentication)
    }

    /// Parses the `options` startup parameter (`-c name=value` and `--name=value`, space
    /// separated, backslash escapes a space) into settings.
    public static func parseOptions(_ options: String) throws(PGWireError) -> [(String, String)] {
        var words: [String] = []
        var current = ""
        var escaped = false
        for character in options {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == " " || character == "\t" {
                if !current.isEmpty { words.append(current) }
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { words.append(current) }
        var settings: [(String, String)] = []
        var index = 0
        func setting(_ word: Substring) throws(PGWireError) -> (String, String) {
            guard let equals = word.firstIndex(of: "="), equals != word.startIndex else {
                throw PGWireError.invalidStartupPacket("bad option")
            }
            // `--statement-timeout=5s` names statement_timeout.
            let name = String(word[..<equals].map { $0 == "-" ? "_" : $0 })
            return (name, String(word[word.index(after: equals)...]))
        }
        while index < words.count {
            let word = words[index]
            if word == "-c" {
                guard index + 1 < words.count else { throw PGWireError.invalidStartupPacket("bad option") }
                settings.append(try setting(Substring(words[index + 1])))
                index += 2
            } else if word.hasPrefix("-c") {
                settings.append(try setting(word.dropFirst(2)))
                index += 1
            } else if word.hasPrefix("--") {
                settings.append(try setting(word.dropFirst(2)))
                index += 1
            } else {
                throw PGWireError.invalidStartupPacket("bad option")
            }
        }
        return settings
    }
}
