/// Range and cross-field rules, checked on the model (so a configuration built in code, or modified
/// live through the admin API, obeys the same rules as a loaded one).
public enum ConfigurationValidator {
    /// Every problem in `configuration`, with YAML key paths.
    public static func validate(_ configuration: ConciergeConfiguration) -> [ConfigurationIssue] {
        validate(configuration, proxiesWithUnknownEngine: [])
    }

    /// Every problem in `configuration`; the engine-specific rules are left out for the proxies at
    /// these indices (their `engine_family` was missing or invalid, and is reported as such).
    static func validate(_ configuration: ConciergeConfiguration, proxiesWithUnknownEngine: Set<Int>) -> [ConfigurationIssue] {
        var issues: [ConfigurationIssue] = []
        check(configuration.drainTimeout, ConfigurationLimits.drainTimeout, "drain_timeout", &issues)

        var listeners: [(keyPath: String, address: HostPort)] = []
        if let admin = configuration.admin {
            if checkAddress(admin.listen, "admin.listen", &issues) { listeners.append(("admin.listen", admin.listen)) }
            if admin.token == nil, !admin.listen.isLoopback {
                issues.append(ConfigurationIssue(
                    keyPath: "admin.listen", value: admin.listen.description,
                    expectation: "a loopback address (127.0.0.1, ::1, localhost) unless admin.token is set",
                    message: "\(admin.listen) is not a loopback address: without admin.token the admin API "
                        + "may listen on loopback only (set admin.token, or listen on 127.0.0.1)"))
            }
            if let token = admin.token, token.isEmpty {
                issues.append(ConfigurationIssue(
                    keyPath: "admin.token", value: "\"\"", expectation: "a non-empty bearer token or secret reference",
                    message: "the token is empty (expected: a non-empty bearer token or a secret reference such as env:NAME)"))
            }
        }
        check(configuration.secretRefreshInterval, ConfigurationLimits.secretRefreshInterval, "secret_refresh_interval", &issues)
        let usesIAM = configuration.proxies.contains { $0.auth.contains { $0.iamAuth == .required } }
        if usesIAM, configuration.iam == nil {
            issues.append(ConfigurationIssue(
                keyPath: "iam", value: nil, expectation: "an identity store (region, account_id, identities)",
                message: "an auth entry has iam_auth REQUIRED: the iam section (region, account_id, identities) is required"))
        }
        if let iam = configuration.iam {
            if iam.region.isEmpty || !iam.region.unicodeScalars.allSatisfy({ $0.isASCIILetter || ("0"..."9").contains($0) || $0 == "-" }) {
                issues.append(ConfigurationIssue(
                    keyPath: "iam.region", value: iam.region, expectation: "an AWS region such as us-east-1",
                    message: "\(renderText(iam.region)) is not a region (expected e.g. us-east-1)"))
            }
            if iam.accountID.count != 12 || !iam.accountID.unicodeScalars.allSatisfy({ ("0"..."9").contains($0) }) {
                issues.append(ConfigurationIssue(
                    keyPath: "iam.account_id", value: iam.accountID, expectation: "12 digits",
                    message: "\(renderText(iam.accountID)) is not an account id (expected: 12 digits)"))
            }
            var seen: Set<String> = []
            for (i, identity) in iam.identities.enumerated() {
                let itemPath = "iam.identities[\(i)]"
                if identity.accessKeyID.isEmpty || !seen.insert(identity.accessKeyID).inserted {
                    issues.append(ConfigurationIssue(
                        keyPath: "\(itemPath).access_key_id", value: identity.accessKeyID, expectation: "a unique, non-empty access key id",
                        message: "\(renderText(identity.accessKeyID)) is empty or used by another identity"))
                }
                if !identity.secretAccessKeyReference.hasPrefix("env:"), !identity.secretAccessKeyReference.hasPrefix("file:") {
                    issues.append(ConfigurationIssue(
                        keyPath: "\(itemPath).secret_access_key", value: nil, expectation: "env:NAME or file:PATH",
                        message: "a secret access key must be a reference (env:NAME or file:PATH), not the key itself"))
                }
                if !identity.arn.hasPrefix("arn:") {
                    issues.append(ConfigurationIssue(
                        keyPath: "\(itemPath).arn", value: identity.arn, expectation: "arn:aws:iam::ACCOUNT:user/NAME (or role)",
                        message: "\(renderText(identity.arn)) is not an ARN"))
                }
            }
        }
        if let sm = configuration.secretsManager {
            if let endpoint = sm.endpoint, !(endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://")) {
                issues.append(ConfigurationIssue(
                    keyPath: "secrets_manager.endpoint", value: endpoint, expectation: "an http:// or https:// URL",
                    message: "\(renderText(endpoint)) is not an http:// or https:// URL"))
            }
            if let reference = sm.secretAccessKeyReference, !reference.hasPrefix("env:"), !reference.hasPrefix("file:") {
                issues.append(ConfigurationIssue(
                    keyPath: "secrets_manager.secret_access_key", value: nil, expectation: "env:NAME or file:PATH",
                    message: "a secret access key must be a reference (env:NAME or file:PATH), not the key itself"))
            }
        }
        if configuration.proxies.isEmpty {
            issues.append(ConfigurationIssue(
                keyPath: "proxies", value: "[]", expectation: "a list of at least one proxy",
                message: "at least one proxy is required"))
        }

        var proxyNames: [String: String] = [:]
        var endpointNames: [String: String] = [:]
        for (index, proxy) in configuration.proxies.enumerated() {
            let path = "proxies[\(index)]"
            issues += validate(proxy, at: path, engineKnown: !proxiesWithUnknownEngine.contains(index))
            if !proxy.name.isEmpty {
                if let first = proxyNames[proxy.name] {
                    issues.append(ConfigurationIssue(
                        keyPath: "\(path).name", value: proxy.name, expectation: "a unique proxy name",
                        message: "\(renderText(proxy.name)) is a duplicate proxy name (already used by \(first))"))
                } else {
                    proxyNames[proxy.name] = "\(path).name"
                }
            }
            if isUsable(proxy.listen) { listeners.append(("\(path).listen", proxy.listen)) }
            for (i, endpoint) in proxy.endpoints.enumerated() {
                let endpointPath = "\(path).endpoints[\(i)]"
                if !endpoint.name.isEmpty {
                    if let first = endpointNames[endpoint.name] {
                        issues.append(ConfigurationIssue(
                            keyPath: "\(endpointPath).name", value: endpoint.name, expectation: "a unique endpoint name",
                            message: "\(renderText(endpoint.name)) is a duplicate endpoint name (already used by \(first))"))
                    } else {
                        endpointNames[endpoint.name] = "\(endpointPath).name"
                    }
                }
                if isUsable(endpoint.listen) { listeners.append(("\(endpointPath).listen", endpoint.listen)) }
            }
        }

        // Listen addresses: 0.0.0.0:P (or [::]:P) clashes with any host on port P.
        for (j, later) in listeners.enumerated() {
            for earlier in listeners[..<j] where later.address.clashes(with: earlier.address) {
                issues.append(ConfigurationIssue(
                    keyPath: later.keyPath, value: later.address.description,
                    expectation: "a listen address not used elsewhere",
                    message: "\(later.address) clashes with \(earlier.keyPath) (\(earlier.address))"))
                break
            }
        }
        return issues
    }

    /// The rules of one proxy (not the cross-proxy ones), with key paths under `keyPath`.
    /// `engineKnown: false` leaves out the rules that depend on `engine_family` (when it did not
    /// decode, the values of the default engine would be judged against an engine nobody wrote).
    public static func validate(_ proxy: ProxyConfiguration, at path: String, engineKnown: Bool = true) -> [ConfigurationIssue] {
        var issues: [ConfigurationIssue] = []
        checkName(proxy.name, "\(path).name", &issues)
        if engineKnown { checkEngineSpecific(proxy, at: path, &issues) }
        _ = checkAddress(proxy.listen, "\(path).listen", &issues)
        for (i, endpoint) in proxy.endpoints.enumerated() {
            checkName(endpoint.name, "\(path).endpoints[\(i)].name", &issues)
            _ = checkAddress(endpoint.listen, "\(path).endpoints[\(i)].listen", &issues)
        }
        if proxy.requireTLS, proxy.tls == nil {
            issues.append(ConfigurationIssue(
                keyPath: "\(path).require_tls", value: "true", expectation: "tls to be configured",
                message: "require_tls: true needs \(path).tls (certificate_file and private_key_file)"))
        }
        if let id = proxy.resourceID, !ConfigurationLimits.isValidResourceID(id) {
            issues.append(ConfigurationIssue(
                keyPath: "\(path).resource_id", value: id, expectation: "prx- and 17 lowercase hex digits",
                message: "\(renderText(id)) is not a proxy resource id (expected: prx- and 17 lowercase hex digits, e.g. prx-0123456789abcdef0)"))
        }
        check(proxy.idleClientTimeout, ConfigurationLimits.idleClientTimeout, "\(path).idle_client_timeout", &issues)
        check(proxy.maxClientConnections, ConfigurationLimits.maxClientConnections,
              "\(path).max_client_connections", &issues)
        check(proxy.maxMessageSize, ConfigurationLimits.maxMessageSize, "\(path).max_message_size", &issues)

        let authRange = ConfigurationLimits.authEntries
        if proxy.auth.isEmpty {
            issues.append(ConfigurationIssue(
                keyPath: "\(path).auth", value: "[]", expectation: "\(authRange.rendered) auth entries",
                message: "at least one auth entry is required (allowed: \(authRange.rendered) entries)"))
        } else if proxy.auth.count > authRange.upperBound {
            issues.append(ConfigurationIssue(
                keyPath: "\(path).auth", value: "\(proxy.auth.count) entries",
                expectation: "\(authRange.rendered) auth entries",
                message: "\(proxy.auth.count) entries are too many (allowed: \(authRange.rendered) entries)"))
        }
        for (i, auth) in proxy.auth.enumerated() where auth.iamAuth == .required {
            if proxy.tls == nil {
                issues.append(ConfigurationIssue(
                    keyPath: "\(path).auth[\(i)].iam_auth", value: "REQUIRED", expectation: "tls to be configured",
                    message: "IAM authentication is allowed only over TLS: set \(path).tls"))
            }
            if proxy.hostnames.isEmpty, proxy.listen.isWildcard {
                issues.append(ConfigurationIssue(
                    keyPath: "\(path).hostnames", value: nil, expectation: "the host names IAM tokens are minted for",
                    message: "with iam_auth REQUIRED and a wildcard listen address, hostnames must list the names "
                        + "clients use to reach the proxy (IAM tokens are signed for one of them)"))
            }
            break
        }

        let group = "\(path).target_group"
        checkName(proxy.targetGroup.name, "\(group).name", &issues)
        issues += validate(proxy.targetGroup.connectionPoolConfig, at: "\(group).connection_pool_config")
        check(proxy.targetGroup.healthCheck.intervalMS, ConfigurationLimits.healthCheckIntervalMS,
              "\(group).health_check.interval_ms", &issues)
        check(proxy.targetGroup.healthCheck.timeoutMS, ConfigurationLimits.healthCheckTimeoutMS,
              "\(group).health_check.timeout_ms", &issues)
        if proxy.targetGroup.targets.isEmpty {
            issues.append(ConfigurationIssue(
                keyPath: "\(group).targets", value: "[]", expectation: "a list of at least one target",
                message: "at least one target is required"))
        }
        var seenTargets: [HostPort: String] = [:]
        for (i, target) in proxy.targetGroup.targets.enumerated() {
            let targetPath = "\(group).targets[\(i)].endpoint"
            guard checkAddress(target.endpoint, targetPath, &issues) else { continue }
            let key = HostPort(host: target.endpoint.host.lowercased(), port: target.endpoint.port)
            if let first = seenTargets[key] {
                issues.append(ConfigurationIssue(
                    keyPath: targetPath, value: target.endpoint.description, expectation: "distinct targets",
                    message: "\(target.endpoint) is listed twice (already at \(first))"))
            } else {
                seenTargets[key] = targetPath
            }
        }
        return issues
    }

    /// The rules of a `connection_pool_config`, with key paths under `keyPath`.
    public static func validate(_ pool: ConnectionPoolConfiguration, at keyPath: String = "connection_pool_config")
        -> [ConfigurationIssue]
    {
        var issues: [ConfigurationIssue] = []
        let maxValid = ConfigurationLimits.maxConnectionsPercent.contains(pool.maxConnectionsPercent)
        check(pool.maxConnectionsPercent, ConfigurationLimits.maxConnectionsPercent,
              "\(keyPath).max_connections_percent", &issues)
        let idlePath = "\(keyPath).max_idle_connections_percent"
        if !ConfigurationLimits.maxIdleConnectionsPercent.contains(pool.maxIdleConnectionsPercent) {
            check(pool.maxIdleConnectionsPercent, ConfigurationLimits.maxIdleConnectionsPercent, idlePath, &issues)
        } else if maxValid, pool.maxIdleConnectionsPercent > pool.maxConnectionsPercent {
            let allowed = 0...pool.maxConnectionsPercent
            issues.append(ConfigurationIssue(
                keyPath: idlePath, value: String(pool.maxIdleConnectionsPercent),
                expectation: "an integer in \(allowed.rendered)",
                message: "\(pool.maxIdleConnectionsPercent) is greater than max_connections_percent "
                    + "(\(pool.maxConnectionsPercent)) (allowed: \(allowed.rendered))"))
        }
        check(pool.connectionBorrowTimeout, ConfigurationLimits.connectionBorrowTimeout,
              "\(keyPath).connection_borrow_timeout", &issues)
        var seen: Set<SessionPinningFilter> = []
        for (i, filter) in pool.sessionPinningFilters.enumerated() where !seen.insert(filter).inserted {
            issues.append(ConfigurationIssue(
                keyPath: "\(keyPath).session_pinning_filters[\(i)]", value: filter.rawValue,
                expectation: "no duplicates", message: "\(filter.rawValue) is listed twice"))
        }
        check(pool.backendIdleTimeout, ConfigurationLimits.backendIdleTimeout, "\(keyPath).backend_idle_timeout", &issues)
        if pool.initQuery.utf8.contains(0) {
            // PostgreSQL would run only what comes before it (the wire format ends a Query there);
            // MySQL's COM_QUERY could carry one, but no SQL text needs it: refused for every engine.
            issues.append(ConfigurationIssue(
                keyPath: "\(keyPath).init_query", value: nil, expectation: "SQL text without a NUL character",
                message: "the init query contains a NUL character (allowed: SQL text without NUL)"))
        }
        return issues
    }

    /// The rules that depend on the proxy's `engine_family`. Everything else (ranges, TLS and its
    /// modes, pinning filters, init query, health checks) means the same for every engine; the
    /// engine's defaults (target port, client_password_auth_type, health-check database) are
    /// applied when loading (`ConfigurationDefaults`).
    private static func checkEngineSpecific(_ proxy: ProxyConfiguration, at path: String, _ issues: inout [ConfigurationIssue]) {
        let engine = proxy.engineFamily
        let allowed = ClientPasswordAuthType.allowed(for: engine).map(\.rawValue).joined(separator: ", ")
        for (i, auth) in proxy.auth.enumerated() where auth.clientPasswordAuthType.engineFamily != engine {
            let value = auth.clientPasswordAuthType.rawValue
            issues.append(ConfigurationIssue(
                keyPath: "\(path).auth[\(i)].client_password_auth_type", value: value,
                expectation: "one of \(allowed)",
                message: "\(value) is not allowed with engine_family \(engine.rawValue) (allowed: \(allowed))"))
        }
    }

    // MARK: Helpers

    private static func check(_ value: Int, _ range: ClosedRange<Int>, _ keyPath: String,
                              _ issues: inout [ConfigurationIssue]) {
        if !range.contains(value) { issues.append(.outOfRange(keyPath, value, range)) }
    }

    private static func checkName(_ name: String, _ keyPath: String, _ issues: inout [ConfigurationIssue]) {
        guard !ConfigurationLimits.isValidName(name) else { return }
        issues.append(ConfigurationIssue(
            keyPath: keyPath, value: name, expectation: ConfigurationLimits.nameExpectation,
            message: "\(renderText(name, forceQuotes: true)) is not a valid name (expected: \(ConfigurationLimits.nameExpectation))"))
    }

    /// Checks an address built in code; returns whether it is usable.
    private static func checkAddress(_ address: HostPort, _ keyPath: String, _ issues: inout [ConfigurationIssue]) -> Bool {
        if !HostPort.portRange.contains(address.port) {
            issues.append(ConfigurationIssue(
                keyPath: keyPath, value: address.description, expectation: "a port in 1...65535",
                message: "\(address) is not a valid address: port \(address.port) is out of range (allowed: 1...65535)"))
            return false
        }
        if case .failure(let error) = HostPort.parse(address.description) {
            issues.append(ConfigurationIssue(
                keyPath: keyPath, value: address.description, expectation: "host:port or [ipv6]:port",
                message: "\(renderText(address.description)) is not a valid address: \(error.reason)"))
            return false
        }
        return true
    }

    private static func isUsable(_ address: HostPort) -> Bool {
        !address.host.isEmpty && HostPort.portRange.contains(address.port)
    }
}
