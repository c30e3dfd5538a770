// AWS request signing (SigV4), RDS IAM authentication tokens, IAM policy evaluation and a
// Secrets Manager client, for Concierge's IAM authentication and secrets store.
//
// - `SigV4Signer`: Signature Version 4, header-signed requests and presigned query strings.
// - `RDSAuthToken`: generates tokens exactly as `aws rds generate-db-auth-token` does, parses
//   and verifies them (what RDS Proxy does with the password a client sends).
// - `IAMPolicy`: parses identity-based policy documents and evaluates an action on a resource.
// - `SecretsManagerClient`: `GetSecretValue` over HTTP(S), SigV4-signed.
//
// Nothing here puts a secret (secret access key, session token, signature, secret value) into
// an error's description.
