// AWS request signing (SigV4), RDS IAM authentication tokens, IAM policy evaluation and a
// Secrets Manager client, for Concierge's IAM authentication and secrets store.
