import ConciergeAWS
import ConciergeConfig

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Checks IAM database authentication tokens as RDS Proxy does: the SigV4 signature (with the
/// identity store's secret keys), validity, host, port, region, the database user, and the
/// principal's policies allowing `rds-db:connect` on
/// `arn:aws:rds-db:REGION:ACCOUNT:dbuser:PRX-ID/USER` (an explicit Deny wins).
public struct IAMAuthenticator: Sendable {
    public struct Identity: Sendable {
        var secretAccessKey: String
        var arn: String
        var policies: [IAMPolicy]
    }

    public let region: String
    public let accountID: String
    public let identities: [String: Identity]

    /// Nil when the configuration has no `iam` section. Throws when a policy does not parse.
    public init?(configuration: IAMConfiguration?, secretKeys: [String: String]) throws {
        guard let configuration else { return nil }
        region = configuration.region
        accountID = configuration.accountID
        var identities: [String: Identity] = [:]
        for (index, identity) in configuration.identities.enumerated() {
            guard let secret = secretKeys[identity.accessKeyID] else { continue }
            let policy: IAMPolicy
            do {
                policy = try IAMPolicy(json: identity.policy)
            } catch {
                throw IAMSetupError(message: "iam.identities[\(index)].policy: \(error)")
            }
            identities[identity.accessKeyID] = Identity(secretAccessKey: secret, arn: identity.arn, policies: [policy])
        }
        self.identities = identities
    }

    public enum Outcome: Sendable {
        case allowed(principal: String)
        /// Why (for the log; the client only ever sees the one generic message).
        case refused(String)
    }

    public func authenticate(token: String, user: String, hosts: Set<String>, port: Int, resourceID: String, now: Date = Date()) -> Outcome {
        let identity: RDSAuthIdentity
        do {
            identity = try RDSAuthToken.verify(
                token: token, expectedHosts: hosts, expectedPort: port, expectedUser: user, region: region, now: now,
                secretKey: { identities[$0]?.secretAccessKey })
        } catch {
            return .refused("\(error)")
        }
        guard let principal = identities[identity.accessKeyID] else { return .refused("unknown access key") }
        let resource = IAMPolicy.rdsDBUserARN(region: region, accountID: accountID, resourceID: resourceID, user: user)
        switch IAMPolicy.evaluate(principal.policies, action: "rds-db:connect", resource: resource) {
        case .allow:
            return .allowed(principal: principal.arn)
        case let decision:
            return .refused("\(principal.arn) may not rds-db:connect to \(resource): \(decision)")
        }
    }
}

/// The `iam` section cannot be used (a policy that does not parse), naming the key at fault.
public struct IAMSetupError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
