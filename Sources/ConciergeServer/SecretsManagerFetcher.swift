import ConciergeAWS
import ConciergeConfig

/// Secrets Manager as the server's source of `arn:aws:secretsmanager:` secrets.
public struct SecretsManagerFetcher: RemoteSecretFetcher {
    let client: SecretsManagerClient

    /// `configuration`: `secrets_manager` (region and endpoint overrides), credentials as loaded.
    public init(configuration: SecretsManagerConfiguration?, credentials: LoadedConfiguration.AWSKeyPair) throws {
        client = try SecretsManagerClient(
            credentials: AWSCredentials(
                accessKeyID: credentials.accessKeyID, secretAccessKey: credentials.secretAccessKey,
                sessionToken: credentials.sessionToken),
            region: configuration?.region, endpoint: configuration?.endpoint)
    }

    public func secretString(arn: String) async throws -> String {
        try await client.getSecretValue(secretID: arn)
    }
}
