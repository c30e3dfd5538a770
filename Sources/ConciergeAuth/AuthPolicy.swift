import ProxyCore

/// What a client's login request leads to, decided alike for every engine once the engine has
/// read who the client is (PostgreSQL's startup packet, MySQL's handshake response).
public enum LoginAdmission: Equatable, Sendable {
    /// Refused before any authentication exchange. `countsAsFailedAuth`: counted in
    /// ClientConnectionsSetupFailedAuth (TLS refusals are; an over-full proxy is not).
    case refuse(ProxyError, countsAsFailedAuth: Bool)
    /// The client sends an IAM authentication token as its password, in clear (TLS only).
    case iamToken
    /// The client proves the user's password with the engine's method configured for the user.
    /// Unknown users go through the same exchange, which always fails, so a probe cannot tell
    /// an unknown user from a wrong password.
    case password
}

/// The proxy's client authentication policy: TLS requirements, the client limit and IAM, in
/// RDS Proxy's order (reference 000, section 6). The engine carries out the exchange it picks.
public struct AuthPolicy: Sendable, Equatable {
    /// `require_tls`: plaintext clients are refused.
    public var requireTLS: Bool

    public init(requireTLS: Bool) {
        self.requireTLS = requireTLS
    }

    /// `iamRequired`: the user's auth entry says `iam_auth: REQUIRED`.
    public func admit(clientUsesTLS: Bool, clientLimitExceeded: Bool, iamRequired: Bool) -> LoginAdmission {
        if requireTLS, !clientUsesTLS { return .refuse(.tlsRequired, countsAsFailedAuth: true) }
        if clientLimitExceeded { return .refuse(.tooManyClients, countsAsFailedAuth: false) }
        if iamRequired {
            // A token is a bearer credential: never accepted over plaintext.
            return clientUsesTLS ? .iamToken : .refuse(.iamRequiresTLS, countsAsFailedAuth: true)
        }
        return .password
    }
}
