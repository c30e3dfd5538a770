import Yams

/// Turns a composed YAML node tree into the model, collecting structural issues (unknown and
/// duplicate keys, missing keys, wrong types, unparsable values). Range and cross-field rules are
/// checked afterwards by `ConfigurationValidator` on the model.
struct ConfigurationDecoder {
    let baseDirectory: String
    var issues: [ConfigurationIssue] = []

    init(baseDirectory: String) {
        self.baseDirectory = baseDirectory
    }

    // MARK: Keys

    static let rootKeys = ["drain_timeout", "admin", "iam", "secrets_manager", "secret_refresh_interval", "proxies"]
    static let iamKeys = ["region", "account_id", "identities"]
    static let identityKeys = ["access_key_id", "secret_access_key", "arn", "policy"]
    static let secretsManagerKeys = ["region", "endpoint", "access_key_id", "secret_access_key"]
    static let clientTLSKeys = ["certificate_file", "private_key_file"]
    static let backendTLSKeys = ["mode", "ca_file"]
    static let adminKeys = ["listen", "token"]
    static let proxyKeys = [
        "name", "resource_id", "engine_family", "listen", "hostnames", "endpoints", "require_tls", "tls",
        "idle_client_timeout", "max_client_connections", "debug_logging", "max_message_size", "auth", "target_group",
    ]
    static let endpointKeys = ["name", "target_role", "listen"]
    static let authKeys = ["auth_scheme", "secret_arn", "iam_auth", "client_password_auth_type", "description"]
    static let targetGroupKeys = ["name", "connection_pool_config", "tls", "health_check", "targets"]
    static let healthCheckKeys = ["interval_ms", "timeout_ms", "database"]
    static let poolKeys = [
        "max_connections_percent", "max_idle_connections_percent", "connection_borrow_timeout",
        "session_pinning_filters", "init_query", "backend_idle_timeout",
    ]
    static let targetKeys = ["endpoint"]

    static let listenExpectation = "host:port or [ipv6]:port with a port in 1...65535"
    static func targetExpectation(defaultPort: Int) -> String {
        "host:port or [ipv6]:port with a port in 1...65535 (port \(defaultPort) when omitted)"
    }

    /// A placeholder for a required address that is missing or invalid (skipped by cross checks).
    static let invalidAddress = HostPort(host: "", port: 0)

    // MARK: Document

    mutating func decodeRoot(_ node: Node) -> ConciergeConfiguration {
        guard case .mapping = node else {
            let found = Self.isNull(node) ? "nothing" : Self.describeKind(node)
            report(
                "", node, value: found, expectation: "a mapping with the keys \(Self.rootKeys.joined(separator: ", "))",
                message: "the configuration must be a mapping of keys (allowed: \(Self.rootKeys.joined(separator: ", "))); found \(found)")
            return ConciergeConfiguration(proxies: [])
        }
        let fields = mapping(node, at: "", allowed: Self.rootKeys, expectation: "")
        let drainTimeout = int(fields, "drain_timeout", at: "", range: ConfigurationLimits.drainTimeout,
                               default: ConfigurationDefaults.drainTimeout)
        var admin: AdminConfiguration?
        if let adminNode = present(fields, "admin") {
            admin = decodeAdmin(adminNode, at: "admin")
        }
        var proxies: [ProxyConfiguration] = []
        if let items = sequence(fields, "proxies", at: "", required: true, expectation: "a list of at least one proxy") {
            for (index, item) in items.enumerated() {
                proxies.append(decodeProxy(item, at: "proxies[\(index)]"))
            }
        }
        var configuration = ConciergeConfiguration(drainTimeout: drainTimeout, admin: admin, proxies: proxies)
        if let node = present(fields, "iam") { configuration.iam = decodeIAM(node, at: "iam") }
        if let node = present(fields, "secrets_manager") {
            let path = "secrets_manager"
            let sm = mapping(node, at: path, allowed: Self.secretsManagerKeys, expectation: "a mapping with region, endpoint, access_key_id, secret_access_key")
            configuration.secretsManager = SecretsManagerConfiguration(
                region: string(sm, "region", at: path, required: false, expectation: "an AWS region such as us-east-1"),
                endpoint: string(sm, "endpoint", at: path, required: false, expectation: "an http:// or https:// URL"),
                accessKeyID: string(sm, "access_key_id", at: path, required: false, expectation: "an access key id"),
                secretAccessKeyReference: string(sm, "secret_access_key", at: path, required: false, expectation: "env:NAME or file:PATH"))
        }
        configuration.secretRefreshInterval = int(
            fields, "secret_refresh_interval", at: "", range: ConfigurationLimits.secretRefreshInterval,
            default: ConfigurationDefaults.secretRefreshInterval)
        return configuration
    }

    mutating func decodeAdmin(_ node: Node, at path: String) -> AdminConfiguration {
        let fields = mapping(node, at: path, allowed: Self.adminKeys, expectation: "a mapping with listen and token")
        let listen = hostPort(fields, "listen", at: path, required: false, defaultPort: nil,
                              expectation: Self.listenExpectation) ?? ConfigurationDefaults.adminListen
        // The token is a secret (or a reference to one): check its type only and never echo it.
        var token: String?
        if let tokenNode = present(fields, "token") {
            if case .scalar(let scalar) = tokenNode {
                token = scalar.string
            } else {
                report(Self.child(path, "token"), tokenNode, value: Self.describeKind(tokenNode),
                       expectation: "a string", message: "found \(Self.describeKind(tokenNode)) (expected: a string)")
            }
        }
        return AdminConfiguration(listen: listen, token: token)
    }

    mutating func decodeProxy(_ node: Node, at path: String) -> ProxyConfiguration {
        let fields = mapping(node, at: path, allowed: Self.proxyKeys, expectation: "a mapping describing a proxy")
        let name = string(fields, "name", at: path, required: true, expectation: ConfigurationLimits.nameExpectation) ?? ""
        let issuesBefore = issues.count
        let engine = enumeration(fields, "engine_family", at: path, required: true, shown: EngineFamily.allCases,
                                 default: EngineFamily.postgresql)
        // The engine's defaults and allowed values apply only when engine_family is given and valid
        // (otherwise its issue is reported, and the engine-specific checks are left out).
        let knownEngine: EngineFamily? = issues.count == issuesBefore ? engine : nil
        let listen = hostPort(fields, "listen", at: path, required: true, defaultPort: nil,
                              expectation: Self.listenExpectation) ?? Self.invalidAddress
        var endpoints: [EndpointConfiguration] = []
        if let items = sequence(fields, "endpoints", at: path, required: false, expectation: "a list of endpoints") {
            for (i, item) in items.enumerated() {
                endpoints.append(decodeEndpoint(item, at: Self.child(path, "endpoints") + "[\(i)]"))
            }
        }
        let requireTLS = bool(fields, "require_tls", at: path, default: ConfigurationDefaults.requireTLS)
        let idle = int(fields, "idle_client_timeout", at: path, range: ConfigurationLimits.idleClientTimeout,
                       default: ConfigurationDefaults.idleClientTimeout)
        let maxClients = int(fields, "max_client_connections", at: path, range: ConfigurationLimits.maxClientConnections,
                             default: ConfigurationDefaults.maxClientConnections)
        let debug = bool(fields, "debug_logging", at: path, default: ConfigurationDefaults.debugLogging)
        let maxMessage = int(fields, "max_message_size", at: path, range: ConfigurationLimits.maxMessageSize,
                             default: ConfigurationDefaults.maxMessageSize)
        var auth: [AuthConfiguration] = []
        if let items = sequence(fields, "auth", at: path, required: true,
                                expectation: "a list of 1...200 auth entries") {
            for (i, item) in items.enumerated() {
                auth.append(decodeAuth(item, at: Self.child(path, "auth") + "[\(i)]", engine: knownEngine))
            }
        }
        var targetGroup = TargetGroupConfiguration(targets: [])
        let targetGroupPath = Self.child(path, "target_group")
        if let groupNode = present(fields, "target_group") {
            targetGroup = decodeTargetGroup(groupNode, at: targetGroupPath, engine: engine)
        } else {
            missing(targetGroupPath, fields, "target_group", expectation: "a mapping with targets")
        }
        var proxy = ProxyConfiguration(
            name: name, engineFamily: engine, listen: listen, endpoints: endpoints, requireTLS: requireTLS,
            idleClientTimeout: idle, maxClientConnections: maxClients, debugLogging: debug,
            maxMessageSize: maxMessage, auth: auth, targetGroup: targetGroup)
        proxy.resourceID = string(fields, "resource_id", at: path, required: false,
                                  expectation: "prx- and 17 lowercase hex digits")
        if let items = sequence(fields, "hostnames", at: path, required: false, expectation: "a list of host names") {
            for (i, item) in items.enumerated() {
                let itemPath = Self.child(path, "hostnames") + "[\(i)]"
                guard case .scalar(let scalar) = item, !scalar.string.isEmpty else {
                    report(itemPath, item, value: Self.displayValue(item), expectation: "a host name",
                           message: "\(Self.displayValue(item)) is not a host name")
                    continue
                }
                proxy.hostnames.append(scalar.string.lowercased())
            }
        }
        if let node = present(fields, "tls") {
            let tlsPath = Self.child(path, "tls")
            let tls = mapping(node, at: tlsPath, allowed: Self.clientTLSKeys, expectation: "a mapping with certificate_file and private_key_file")
            let certificate = string(tls, "certificate_file", at: tlsPath, required: true, expectation: "a PEM certificate file")
            let key = string(tls, "private_key_file", at: tlsPath, required: true, expectation: "a PEM private key file")
            if let certificate, let key {
                proxy.tls = ClientTLSConfiguration(
                    certificateFile: SecretReference.resolvePath(certificate, against: baseDirectory),
                    privateKeyFile: SecretReference.resolvePath(key, against: baseDirectory))
            }
        }
        return proxy
    }

    mutating func decodeIAM(_ node: Node, at path: String) -> IAMConfiguration {
        let fields = mapping(node, at: path, allowed: Self.iamKeys, expectation: "a mapping with region, account_id and identities")
        let region = string(fields, "region", at: path, required: true, expectation: "an AWS region such as us-east-1") ?? ""
        let account = string(fields, "account_id", at: path, required: true, expectation: "a 12-digit account id") ?? ""
        var identities: [IAMIdentity] = []
        if let items = sequence(fields, "identities", at: path, required: true, expectation: "a list of identities") {
            for (i, item) in items.enumerated() {
                let itemPath = Self.child(path, "identities") + "[\(i)]"
                let f = mapping(item, at: itemPath, allowed: Self.identityKeys,
                                expectation: "a mapping with access_key_id, secret_access_key, arn and policy")
                let key = string(f, "access_key_id", at: itemPath, required: true, expectation: "an access key id") ?? ""
                let secret = string(f, "secret_access_key", at: itemPath, required: true, expectation: "env:NAME or file:PATH") ?? ""
                let arn = string(f, "arn", at: itemPath, required: true, expectation: "the principal's ARN") ?? ""
                var policy = ""
                if let policyNode = present(f, "policy") {
                    if case .scalar(let scalar) = policyNode {
                        policy = scalar.string
                    } else {
                        policy = Self.json(policyNode)
                    }
                } else {
                    missing(Self.child(itemPath, "policy"), f, "policy", expectation: "an IAM policy (JSON text or a YAML mapping)")
                }
                identities.append(IAMIdentity(accessKeyID: key, secretAccessKeyReference: secret, arn: arn, policy: policy))
            }
        }
        return IAMConfiguration(region: region, accountID: account, identities: identities)
    }

    /// A YAML node as JSON text (for inline policies written in YAML).
    static func json(_ node: Node) -> String {
        switch node {
        case .mapping(let map):
            return "{" + map.map { key, value in json(.scalar(.init(key.string ?? ""))) + ":" + json(value) }.joined(separator: ",") + "}"
        case .sequence(let list):
            return "[" + list.map { json($0) }.joined(separator: ",") + "]"
        case .scalar(let scalar):
            switch tagName(node) {
            case .null: return "null"
            case .bool: return node.bool == true ? "true" : "false"
            case .int, .float: return scalar.string
            default:
                var out = "\""
                for character in scalar.string.unicodeScalars {
                    switch character {
                    case "\"": out += "\\\""
                    case "\\": out += "\\\\"
                    case "\n": out += "\\n"
                    case _ where character.value < 0x20: out += String(format: "\\u%04x", character.value)
                    default: out.unicodeScalars.append(character)
                    }
                }
                return out + "\""
            }
        }
    }

    mutating func decodeEndpoint(_ node: Node, at path: String) -> EndpointConfiguration {
        let fields = mapping(node, at: path, allowed: Self.endpointKeys, expectation: "a mapping describing an endpoint")
        let name = string(fields, "name", at: path, required: true, expectation: ConfigurationLimits.nameExpectation) ?? ""
        let role = enumeration(fields, "target_role", at: path, required: false, shown: TargetRole.allCases,
                               default: TargetRole.readWrite)
        let listen = hostPort(fields, "listen", at: path, required: true, defaultPort: nil,
                              expectation: Self.listenExpectation) ?? Self.invalidAddress
        return EndpointConfiguration(name: name, targetRole: role, listen: listen)
    }

    /// `engine`: the proxy's engine family, nil when it is missing or invalid (every
    /// `client_password_auth_type` is shown as allowed then).
    mutating func decodeAuth(_ node: Node, at path: String, engine: EngineFamily?) -> AuthConfiguration {
        let fields = mapping(node, at: path, allowed: Self.authKeys, expectation: "a mapping describing an auth entry")
        let scheme = enumeration(fields, "auth_scheme", at: path, required: false, shown: AuthScheme.allCases,
                                 default: AuthScheme.secrets)
        let secretPath = Self.child(path, "secret_arn")
        let written = string(fields, "secret_arn", at: path, required: true, expectation: SecretReference.expectation)
        var reference = SecretReference.file(path: "")
        if let written {
            switch SecretReference.parse(written, baseDirectory: baseDirectory) {
            case .success(let parsed):
                reference = parsed
            case .failure(let error):
                report(secretPath, fields.nodes["secret_arn"], value: written, expectation: SecretReference.expectation,
                       message: "\(renderText(written)): \(error.reason)")
            }
        }
        let iam = enumeration(fields, "iam_auth", at: path, required: false, shown: IAMAuth.allCases,
                              default: IAMAuth.disabled)
        // Any known name decodes; one of another engine is refused by the validator, by engine.
        let passwordType = enumeration(
            fields, "client_password_auth_type", at: path, required: false,
            shown: engine.map { ClientPasswordAuthType.allowed(for: $0) } ?? ClientPasswordAuthType.allCases,
            default: ConfigurationDefaults.clientPasswordAuthType(for: engine ?? .postgresql))
        let description = string(fields, "description", at: path, required: false, expectation: "a string") ?? ""
        return AuthConfiguration(
            authScheme: scheme, secretARN: written ?? "", secret: reference, iamAuth: iam,
            clientPasswordAuthType: passwordType, description: description)
    }

    /// `engine`: the proxy's engine family (its default port and health-check database).
    mutating func decodeTargetGroup(_ node: Node, at path: String, engine: EngineFamily) -> TargetGroupConfiguration {
        let fields = mapping(node, at: path, allowed: Self.targetGroupKeys, expectation: "a mapping with targets")
        let name = string(fields, "name", at: path, required: false, expectation: ConfigurationLimits.nameExpectation)
            ?? ConfigurationDefaults.targetGroupName
        var pool = ConnectionPoolConfiguration()
        if let poolNode = present(fields, "connection_pool_config") {
            pool = decodePool(poolNode, at: Self.child(path, "connection_pool_config"))
        }
        var targets: [TargetConfiguration] = []
        if let items = sequence(fields, "targets", at: path, required: true,
                                expectation: "a list of at least one target") {
            for (i, item) in items.enumerated() {
                let itemPath = Self.child(path, "targets") + "[\(i)]"
                let itemFields = mapping(item, at: itemPath, allowed: Self.targetKeys,
                                         expectation: "a mapping with endpoint")
                let defaultPort = ConfigurationDefaults.targetPort(for: engine)
                let endpoint = hostPort(itemFields, "endpoint", at: itemPath, required: true, defaultPort: defaultPort,
                                        expectation: Self.targetExpectation(defaultPort: defaultPort)) ?? Self.invalidAddress
                targets.append(TargetConfiguration(endpoint: endpoint))
            }
        }
        var group = TargetGroupConfiguration(name: name, connectionPoolConfig: pool, targets: targets)
        group.healthCheck.database = ConfigurationDefaults.healthCheckDatabase(for: engine)
        if let node = present(fields, "health_check") {
            let hcPath = Self.child(path, "health_check")
            let hc = mapping(node, at: hcPath, allowed: Self.healthCheckKeys, expectation: "a mapping with interval_ms, timeout_ms and database")
            group.healthCheck = HealthCheckConfiguration(
                intervalMS: int(hc, "interval_ms", at: hcPath, range: ConfigurationLimits.healthCheckIntervalMS,
                                default: ConfigurationDefaults.healthCheckIntervalMS),
                timeoutMS: int(hc, "timeout_ms", at: hcPath, range: ConfigurationLimits.healthCheckTimeoutMS,
                               default: ConfigurationDefaults.healthCheckTimeoutMS),
                database: string(hc, "database", at: hcPath, required: false, expectation: "a database name")
                    ?? ConfigurationDefaults.healthCheckDatabase(for: engine))
        }
        if let node = present(fields, "tls") {
            let tlsPath = Self.child(path, "tls")
            let tls = mapping(node, at: tlsPath, allowed: Self.backendTLSKeys, expectation: "a mapping with mode and ca_file")
            let mode = enumeration(tls, "mode", at: tlsPath, required: false, shown: BackendTLSMode.allCases, default: BackendTLSMode.disable)
            let ca = string(tls, "ca_file", at: tlsPath, required: false, expectation: "a PEM file of trusted certificates")
            group.tls = BackendTLSConfiguration(mode: mode, caFile: ca.map { SecretReference.resolvePath($0, against: baseDirectory) })
        }
        return group
    }

    mutating func decodePool(_ node: Node, at path: String) -> ConnectionPoolConfiguration {
        let fields = mapping(node, at: path, allowed: Self.poolKeys, expectation: "a mapping of pool settings")
        let maxPercent = int(fields, "max_connections_percent", at: path, range: ConfigurationLimits.maxConnectionsPercent,
                             default: ConfigurationDefaults.maxConnectionsPercent)
        // RDS Proxy's default: half of MaxConnectionsPercent (50 when neither is given).
        let idlePercent = int(fields, "max_idle_connections_percent", at: path,
                              range: ConfigurationLimits.maxIdleConnectionsPercent,
                              default: ConfigurationDefaults.maxIdleConnectionsPercent(forMaxConnectionsPercent: maxPercent))
        let borrow = int(fields, "connection_borrow_timeout", at: path, range: ConfigurationLimits.connectionBorrowTimeout,
                         default: ConfigurationDefaults.connectionBorrowTimeout)
        var filters: [SessionPinningFilter] = []
        if let items = sequence(fields, "session_pinning_filters", at: path, required: false,
                                expectation: "a list of EXCLUDE_VARIABLE_SETS") {
            let filtersPath = Self.child(path, "session_pinning_filters")
            for (i, item) in items.enumerated() {
                let itemPath = filtersPath + "[\(i)]"
                guard let filter: SessionPinningFilter = enumerationValue(item, at: itemPath, shown: SessionPinningFilter.allCases)
                else { continue }
                if filters.contains(filter) {
                    report(itemPath, item, value: filter.rawValue, expectation: "no duplicates",
                           message: "\(filter.rawValue) is listed twice")
                } else {
                    filters.append(filter)
                }
            }
        }
        let initQuery = string(fields, "init_query", at: path, required: false, expectation: "a string") ?? ""
        let backendIdle = int(fields, "backend_idle_timeout", at: path, range: ConfigurationLimits.backendIdleTimeout,
                              default: ConfigurationDefaults.backendIdleTimeout)
        return ConnectionPoolConfiguration(
            maxConnectionsPercent: maxPercent, maxIdleConnectionsPercent: idlePercent, connectionBorrowTimeout: borrow,
            sessionPinningFilters: filters, initQuery: initQuery, backendIdleTimeout: backendIdle)
    }

    // MARK: Mappings

    struct Fields {
        var path: String
        var node: Node?
        /// Value nodes by key (merge keys expanded; explicit keys win).
        var nodes: [String: Node] = [:]
    }

    /// Reads a mapping, reporting a wrong type, duplicate keys and unknown keys.
    mutating func mapping(_ node: Node, at path: String, allowed: [String], expectation: String) -> Fields {
        var fields = Fields(path: path, node: node)
        guard case .mapping(let map) = node else {
            report(path, node, value: Self.displayValue(node), expectation: expectation,
                   message: "\(Self.displayValue(node)) is not a mapping (expected: \(expectation))")
            return fields
        }
        var merged: [Node] = []
        for (keyNode, value) in map {
            guard case .scalar(let keyScalar) = keyNode else {
                report(path, keyNode, value: Self.describeKind(keyNode), expectation: "string keys",
                       message: "found \(Self.describeKind(keyNode)) as a key (expected: string keys)")
                continue
            }
            if keyScalar.style == .plain || keyScalar.style == .any, Self.tagName(keyNode) == .merge {
                merged.append(value)
                continue
            }
            let key = keyScalar.string
            let keyPath = Self.child(path, key)
            if !allowed.contains(key) {
                report(keyPath, keyNode, value: key, expectation: "one of \(allowed.joined(separator: ", "))",
                       message: "unknown key (allowed: \(allowed.joined(separator: ", ")))")
                continue
            }
            if fields.nodes[key] != nil {
                report(keyPath, keyNode, value: key, expectation: "each key at most once",
                       message: "duplicate key (each key may appear once)")
                continue
            }
            fields.nodes[key] = value
        }
        // YAML merge keys (`<<: *defaults`): earlier sources win, explicit keys win over all.
        var sources: [Node] = []
        for value in merged {
            if case .sequence(let list) = value { sources.append(contentsOf: list) } else { sources.append(value) }
        }
        for source in sources {
            guard case .mapping = source else {
                report(Self.child(path, "<<"), source, value: Self.describeKind(source), expectation: "a mapping",
                       message: "a merge key (<<) needs a mapping or a list of mappings")
                continue
            }
            // Recursively validated with the same allowed keys; the issues carry this mapping's paths.
            var inner = ConfigurationDecoder(baseDirectory: baseDirectory)
            let innerFields = inner.mapping(source, at: path, allowed: allowed, expectation: expectation)
            for issue in inner.issues where !issues.contains(issue) { issues.append(issue) }
            for (key, value) in innerFields.nodes where fields.nodes[key] == nil {
                fields.nodes[key] = value
            }
        }
        return fields
    }

    /// The value of a key that is present and not null.
    func present(_ fields: Fields, _ key: String) -> Node? {
        guard let node = fields.nodes[key], !Self.isNull(node) else { return nil }
        return node
    }

    mutating func missing(_ keyPath: String, _ fields: Fields, _ key: String, expectation: String) {
        // Only when the parent is a mapping: a parent of the wrong type has already been reported.
        guard case .mapping = fields.node else { return }
        let node = fields.nodes[key]
        report(keyPath, node ?? fields.node, value: nil, expectation: expectation,
               message: node == nil ? "missing required key (expected: \(expectation))"
                   : "missing value (expected: \(expectation))")
    }

    // MARK: Scalars

    mutating func int(_ fields: Fields, _ key: String, at path: String, range: ClosedRange<Int>, default value: Int) -> Int {
        guard let node = present(fields, key) else { return value }
        let keyPath = Self.child(path, key)
        let expectation = "an integer in \(range.rendered)"
        guard case .scalar(let scalar) = node else {
            report(keyPath, node, value: Self.describeKind(node), expectation: expectation,
                   message: "found \(Self.describeKind(node)) (expected: \(expectation))")
            return value
        }
        let text = scalar.string
        if Self.tagName(node) == .int {
            if let parsed = Int(text) ?? node.int { return parsed }
            // Matches the integer syntax but does not fit in 64 bits.
            report(.outOfRange(keyPath, text, range), node)
            return value
        }
        let quotedNumber = Self.tagName(node) == .str && scalar.style != .plain && Int(text) != nil
        let rendered = Self.displayValue(node)
        report(keyPath, node, value: rendered, expectation: expectation,
               message: quotedNumber
                   ? "\(rendered) is a string, not an integer (expected: \(expectation); remove the quotes)"
                   : "\(rendered) is not an integer (expected: \(expectation))")
        return value
    }

    mutating func bool(_ fields: Fields, _ key: String, at path: String, default value: Bool) -> Bool {
        guard let node = present(fields, key) else { return value }
        if case .scalar(let scalar) = node, Self.tagName(node) == .bool {
            if scalar.string == "true" { return true }
            if scalar.string == "false" { return false }
        }
        let rendered = Self.displayValue(node)
        let quotedBool: Bool
        if case .scalar(let scalar) = node, scalar.style != .plain, ["true", "false"].contains(scalar.string) {
            quotedBool = true
        } else {
            quotedBool = false
        }
        report(Self.child(path, key), node, value: rendered, expectation: "true or false",
               message: quotedBool ? "\(rendered) is a string, not a boolean (expected: true or false; remove the quotes)"
                   : "\(rendered) is not a boolean (expected: true or false)")
        return value
    }

    mutating func string(_ fields: Fields, _ key: String, at path: String, required: Bool, expectation: String) -> String? {
        let keyPath = Self.child(path, key)
        guard let node = present(fields, key) else {
            if required { missing(keyPath, fields, key, expectation: expectation) }
            return nil
        }
        guard case .scalar(let scalar) = node else {
            report(keyPath, node, value: Self.describeKind(node), expectation: expectation,
                   message: "found \(Self.describeKind(node)) (expected: \(expectation))")
            return nil
        }
        return scalar.string
    }

    mutating func enumeration<E: RawRepresentable & CaseIterable>(
        _ fields: Fields, _ key: String, at path: String, required: Bool, shown: [E], default value: E
    ) -> E where E.RawValue == String {
        let keyPath = Self.child(path, key)
        guard let node = present(fields, key) else {
            if required {
                missing(keyPath, fields, key, expectation: "one of \(shown.map(\.rawValue).joined(separator: ", "))")
            }
            return value
        }
        return enumerationValue(node, at: keyPath, shown: shown) ?? value
    }

    mutating func enumerationValue<E: RawRepresentable & CaseIterable>(_ node: Node, at keyPath: String, shown: [E]) -> E?
    where E.RawValue == String {
        let allowed = shown.map(\.rawValue)
        guard case .scalar(let scalar) = node, !Self.isNull(node) else {
            report(keyPath, node, value: Self.describeKind(node), expectation: "one of \(allowed.joined(separator: ", "))",
                   message: "found \(Self.describeKind(node)) (expected: one of \(allowed.joined(separator: ", ")))")
            return nil
        }
        if let parsed = E(rawValue: scalar.string) { return parsed }
        report(.invalidEnum(keyPath, scalar.string, allowed: allowed), node)
        return nil
    }

    mutating func hostPort(
        _ fields: Fields, _ key: String, at path: String, required: Bool, defaultPort: Int?, expectation: String
    ) -> HostPort? {
        let keyPath = Self.child(path, key)
        guard let text = string(fields, key, at: path, required: required, expectation: expectation) else { return nil }
        switch HostPort.parse(text, defaultPort: defaultPort) {
        case .success(let value):
            return value
        case .failure(let error):
            let suffix = error.reason.contains("(allowed:") ? "" : " (expected: \(expectation))"
            report(keyPath, fields.nodes[key], value: text, expectation: expectation,
                   message: "\(renderText(text, forceQuotes: text.isEmpty)) is not a valid address: \(error.reason)\(suffix)")
            return nil
        }
    }

    mutating func sequence(_ fields: Fields, _ key: String, at path: String, required: Bool, expectation: String) -> [Node]? {
        let keyPath = Self.child(path, key)
        guard let node = present(fields, key) else {
            if required { missing(keyPath, fields, key, expectation: expectation) }
            return nil
        }
        guard case .sequence(let list) = node else {
            report(keyPath, node, value: Self.displayValue(node), expectation: expectation,
                   message: "\(Self.displayValue(node)) is not a list (expected: \(expectation))")
            return nil
        }
        return Array(list)
    }

    // MARK: Reporting

    mutating func report(_ keyPath: String, _ node: Node?, value: String?, expectation: String, message: String) {
        report(ConfigurationIssue(keyPath: keyPath, value: value, expectation: expectation, message: message), node)
    }

    mutating func report(_ issue: ConfigurationIssue, _ node: Node?) {
        var issue = issue
        if let mark = node?.mark {
            issue.line = mark.line
            issue.column = mark.column
        }
        issues.append(issue)
    }

    // MARK: Node helpers

    static func child(_ path: String, _ key: String) -> String {
        path.isEmpty ? key : "\(path).\(key)"
    }

    /// The resolved YAML tag (`!!str` for quoted scalars, `!!int`, `!!bool`, `!!null` ... for plain ones).
    static func tagName(_ node: Node) -> Tag.Name {
        Resolver.default.resolveTag(of: node)
    }

    static func isNull(_ node: Node) -> Bool {
        if case .scalar = node { return Self.tagName(node) == .null }
        return false
    }

    static func describeKind(_ node: Node) -> String {
        switch node {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .scalar: return isNull(node) ? "null" : "a scalar"
        }
    }

    /// A scalar's text (strings JSON-quoted so `"abc"` reads as a string), or the kind of a collection.
    static func displayValue(_ node: Node) -> String {
        guard case .scalar(let scalar) = node else { return describeKind(node) }
        if isNull(node) { return "null" }
        return renderText(scalar.string, forceQuotes: Self.tagName(node) == .str)
    }
}
