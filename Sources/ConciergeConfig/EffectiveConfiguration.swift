/// Renders the effective configuration: every key with its value or default, secret references as
/// written, never a password. The output parses back to the same model.
public enum EffectiveConfiguration {
    public static func render(_ config: ConciergeConfiguration) -> String {
        var out = "# Effective Concierge configuration (every default filled in)\n"
        out += "drain_timeout: \(config.drainTimeout)\n"
        if let admin = config.admin {
            out += "admin:\n"
            out += "  listen: \(quoted(admin.listen.description))\n"
            if let token = admin.token {
                if isReference(token) {
                    out += "  token: \(quoted(token))\n"
                } else {
                    out += "  token: \"<redacted>\"  # a literal token is never shown\n"
                }
            }
        } else {
            out += "# admin: not configured (no admin API or /metrics listener)\n"
        }
        out += "secret_refresh_interval: \(config.secretRefreshInterval)\n"
        if let iam = config.iam {
            out += "iam:\n"
            out += "  region: \(quoted(iam.region))\n"
            out += "  account_id: \(quoted(iam.accountID))\n"
            out += iam.identities.isEmpty ? "  identities: []\n" : "  identities:\n"
            for identity in iam.identities {
                out += "    - access_key_id: \(quoted(identity.accessKeyID))\n"
                out += "      secret_access_key: \(quoted(identity.secretAccessKeyReference))\n"
                out += "      arn: \(quoted(identity.arn))\n"
                out += "      policy: \(quoted(identity.policy))\n"
            }
        }
        if let sm = config.secretsManager {
            out += "secrets_manager:\n"
            if let region = sm.region { out += "  region: \(quoted(region))\n" }
            if let endpoint = sm.endpoint { out += "  endpoint: \(quoted(endpoint))\n" }
            if let key = sm.accessKeyID { out += "  access_key_id: \(quoted(key))\n" }
            if let reference = sm.secretAccessKeyReference { out += "  secret_access_key: \(quoted(reference))\n" }
        }
        out += config.proxies.isEmpty ? "proxies: []\n" : "proxies:\n"
        for proxy in config.proxies {
            out += "  - name: \(quoted(proxy.name))\n"
            var p = ""
            if let id = proxy.resourceID {
                p += "resource_id: \(quoted(id))\n"
            } else {
                p += "# resource_id: \(quoted(proxy.effectiveResourceID))  (derived from the name)\n"
            }
            p += "engine_family: \(proxy.engineFamily.rawValue)\n"
            p += "listen: \(quoted(proxy.listen.description))\n"
            p += "hostnames: [\(proxy.hostnames.map(quoted).joined(separator: ", "))]\n"
            if proxy.endpoints.isEmpty {
                p += "endpoints: []\n"
            } else {
                p += "endpoints:\n"
                for endpoint in proxy.endpoints {
                    p += "  - name: \(quoted(endpoint.name))\n"
                    p += "    target_role: \(endpoint.targetRole.rawValue)\n"
                    p += "    listen: \(quoted(endpoint.listen.description))\n"
                }
            }
            p += "require_tls: \(proxy.requireTLS)\n"
            if let tls = proxy.tls {
                p += "tls:\n"
                p += "  certificate_file: \(quoted(tls.certificateFile))\n"
                p += "  private_key_file: \(quoted(tls.privateKeyFile))\n"
            }
            p += "idle_client_timeout: \(proxy.idleClientTimeout)\n"
            p += "max_client_connections: \(proxy.maxClientConnections)\n"
            p += "debug_logging: \(proxy.debugLogging)\n"
            p += "max_message_size: \(proxy.maxMessageSize)\n"
            if proxy.auth.isEmpty {
                p += "auth: []\n"
            } else {
                p += "auth:\n"
                for auth in proxy.auth {
                    let written = auth.secretARN.isEmpty ? auth.secret.description : auth.secretARN
                    p += "  - auth_scheme: \(auth.authScheme.rawValue)\n"
                    p += "    secret_arn: \(quoted(written))\n"
                    p += "    iam_auth: \(auth.iamAuth.rawValue)\n"
                    p += "    client_password_auth_type: \(auth.clientPasswordAuthType.rawValue)\n"
                    p += "    description: \(quoted(auth.description))\n"
                }
            }
            let group = proxy.targetGroup
            let pool = group.connectionPoolConfig
            p += "target_group:\n"
            p += "  name: \(quoted(group.name))\n"
            p += "  connection_pool_config:\n"
            p += "    max_connections_percent: \(pool.maxConnectionsPercent)\n"
            p += "    max_idle_connections_percent: \(pool.maxIdleConnectionsPercent)\n"
            p += "    connection_borrow_timeout: \(pool.connectionBorrowTimeout)\n"
            p += "    session_pinning_filters: [\(pool.sessionPinningFilters.map(\.rawValue).joined(separator: ", "))]\n"
            p += "    init_query: \(quoted(pool.initQuery))\n"
            p += "    backend_idle_timeout: \(pool.backendIdleTimeout)\n"
            p += "  health_check:\n"
            p += "    interval_ms: \(group.healthCheck.intervalMS)\n"
            p += "    timeout_ms: \(group.healthCheck.timeoutMS)\n"
            p += "    database: \(quoted(group.healthCheck.database))\n"
            p += "  tls:\n"
            p += "    mode: \(group.tls.mode.rawValue)\n"
            if let ca = group.tls.caFile { p += "    ca_file: \(quoted(ca))\n" }
            if group.targets.isEmpty {
                p += "  targets: []\n"
            } else {
                p += "  targets:\n"
                for target in group.targets {
                    p += "    - endpoint: \(quoted(target.endpoint.description))\n"
                }
            }
            for line in p.split(separator: "\n", omittingEmptySubsequences: false) where !line.isEmpty {
                out += "    \(line)\n"
            }
        }
        return out
    }

    private static func isReference(_ token: String) -> Bool {
        token.hasPrefix("file:") || token.hasPrefix("env:") || token.hasPrefix("arn:")
    }
}
