import ConciergeJSON

/// The outcome of evaluating policies for a request, with IAM's precedence: an explicit deny
/// overrides any allow; without an allow the request is implicitly denied.
public enum IAMDecision: Sendable, Equatable, CustomStringConvertible {
    case allow
    case explicitDeny
    case implicitDeny

    public var isAllowed: Bool { self == .allow }

    public var description: String {
        switch self {
        case .allow: return "allow"
        case .explicitDeny: return "explicitDeny"
        case .implicitDeny: return "implicitDeny"
        }
    }
}

/// Why a policy document was refused. The description names the element, e.g.
/// `Statement[1].Effect: expected "Allow" or "Deny", got "allow"`.
public enum IAMPolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Not JSON: where and why.
    case invalidJSON(line: Int, column: Int, reason: String)
    /// Valid JSON that is not a valid policy: the element's path and the problem.
    case invalidPolicy(element: String, reason: String)

    public var description: String {
        switch self {
        case .invalidJSON(let line, let column, let reason):
            return "the policy is not valid JSON (line \(line), column \(column)): \(reason)"
        case .invalidPolicy(let element, let reason):
            return "\(element): \(reason)"
        }
    }
}

/// An identity-based IAM policy document, evaluated for an action on a resource.
///
/// Supported: `Version` (`2012-10-17` or `2008-10-17`, optional), `Id`, `Statement` (an
/// object or an array), and in each statement `Sid`, `Effect` (`Allow`/`Deny`, case-sensitive),
/// exactly one of `Action`/`NotAction` and exactly one of `Resource`/`NotResource` (a string or
/// an array of strings), `Condition`, `Principal`, `NotPrincipal`. Any other element is an
/// error, so a misspelled element name is reported rather than silently ignored.
///
/// Matching: actions case-insensitively, resources case-sensitively, both with `*` (any
/// characters, `:` and `/` included) and `?` (one character). An action must be `*` or
/// `service:action`.
///
/// What is not evaluated fails closed. A statement whose applying depends on something not
/// evaluated — a non-empty `Condition`, a `Principal`/`NotPrincipal`, or (in a `2012-10-17`
/// policy) a resource pattern with a policy variable such as `${aws:username}` when no other
/// pattern of the statement decides — is taken as not applying when it is an `Allow`, and as
/// applying when it is a `Deny` (its action must still match). The escapes `${*}`, `${?}` and
/// `${$}` stand for the literal characters `*`, `?` and `$`.
public struct IAMPolicy: Sendable, Equatable {
    public enum Effect: String, Sendable, Equatable {
        case allow = "Allow"
        case deny = "Deny"
    }

    /// A compiled pattern (`*`, `?`, literal characters).
    public struct Pattern: Sendable, Equatable, CustomStringConvertible {
        enum Token: Sendable, Equatable {
            case literal(Character)
            case any
            case one
        }

        /// The pattern as written in the policy.
        public let text: String
        let tokens: [Token]
        /// False when the pattern has a policy variable that cannot be resolved.
        let evaluable: Bool

        public var description: String { text }

        init(_ text: String, caseInsensitive: Bool, policyVariables: Bool) {
            self.text = text
            var tokens: [Token] = []
            var evaluable = true
            let characters = Array(caseInsensitive ? text.lowercased() : text)
            var i = 0
            while i < characters.count {
                let c = characters[i]
                if policyVariables, c == "$", i + 1 < characters.count, characters[i + 1] == "{",
                   let close = characters[(i + 2)...].firstIndex(of: "}")
                {
                    switch String(characters[(i + 2)..<close]) {
                    case "*": tokens.append(.literal("*"))
                    case "?": tokens.append(.literal("?"))
                    case "$": tokens.append(.literal("$"))
                    default: evaluable = false
                    }
                    i = close + 1
                    continue
                }
                switch c {
                case "*": if tokens.last != .any { tokens.append(.any) }
                case "?": tokens.append(.one)
                default: tokens.append(.literal(c))
                }
                i += 1
            }
            self.tokens = tokens
            self.evaluable = evaluable
        }

        /// Glob matching with backtracking on the last `*` (linear in practice).
        func matches(_ value: [Character]) -> Bool {
            var p = 0, v = 0
            var starP = -1, starV = 0
            while v < value.count {
                if p < tokens.count {
                    switch tokens[p] {
                    case .any:
                        starP = p
                        starV = v
                        p += 1
                        continue
                    case .one:
                        p += 1
                        v += 1
                        continue
                    case .literal(let c) where c == value[v]:
                        p += 1
                        v += 1
                        continue
                    default:
                        break
                    }
                }
                guard starP >= 0 else { return false }
                p = starP + 1
                starV += 1
                v = starV
            }
            while p < tokens.count, tokens[p] == .any { p += 1 }
            return p == tokens.count
        }
    }

    public struct Statement: Sendable, Equatable {
        public var sid: String?
        public var effect: Effect
        /// The `Action` patterns, or the `NotAction` ones when `notAction` is true.
        public var actions: [Pattern]
        public var notAction: Bool
        /// The `Resource` patterns, or the `NotResource` ones when `notResource` is true.
        public var resources: [Pattern]
        public var notResource: Bool
        /// True when the statement has a non-empty `Condition` or a `Principal`/`NotPrincipal`,
        /// which are not evaluated (see `IAMPolicy`: fail closed).
        public var hasUnevaluatedConditions: Bool

        enum Applicability { case applies, mayApply, doesNotApply }

        /// Whether the statement applies to the request: `mayApply` when that depends on
        /// something not evaluated (a condition, a principal, a policy variable).
        func applicability(action: [Character], resource: [Character]) -> Applicability {
            guard actions.contains(where: { $0.matches(action) }) != notAction else { return .doesNotApply }
            var known = false
            var unknown = false
            for pattern in resources {
                if !pattern.evaluable {
                    unknown = true
                } else if pattern.matches(resource) {
                    known = true
                    break
                }
            }
            let resourceApplies: Applicability
            if notResource {
                // A matching NotResource pattern excludes the resource; an unresolvable one might.
                resourceApplies = known ? .doesNotApply : (unknown ? .mayApply : .applies)
            } else {
                resourceApplies = known ? .applies : (unknown ? .mayApply : .doesNotApply)
            }
            if resourceApplies == .applies, hasUnevaluatedConditions { return .mayApply }
            return resourceApplies
        }
    }

    public var version: String?
    public var id: String?
    public var statements: [Statement]

    /// Parses a policy document (JSON text). Throws `IAMPolicyError` naming the problem.
    public init(json: String) throws(IAMPolicyError) {
        let document: JSON
        do {
            document = try JSON.parse(json)
        } catch {
            throw .invalidJSON(line: error.line, column: error.column, reason: error.reason)
        }
        guard case .object(let members) = document else {
            throw .invalidPolicy(element: "policy", reason: "expected a JSON object, got \(document.typeName)")
        }
        try Self.refuseRepeatedMembers(members, in: "policy")
        var version: String?
        var id: String?
        var statementValue: JSON?
        for (key, value) in members {
            switch key {
            case "Version":
                guard let v = value.stringValue else { throw .invalidPolicy(element: "Version", reason: "expected a string, got \(value.typeName)") }
                guard v == "2012-10-17" || v == "2008-10-17" else {
                    throw .invalidPolicy(element: "Version", reason: "expected \"2012-10-17\" or \"2008-10-17\", got \"\(v)\"")
                }
                version = v
            case "Id":
                guard let v = value.stringValue else { throw .invalidPolicy(element: "Id", reason: "expected a string, got \(value.typeName)") }
                id = v
            case "Statement":
                statementValue = value
            default:
                throw .invalidPolicy(element: key, reason: "unknown element (expected Version, Id, Statement)")
            }
        }
        guard let statementValue else { throw .invalidPolicy(element: "Statement", reason: "missing") }
        let statementObjects: [(String, JSON)]
        switch statementValue {
        case .object: statementObjects = [("Statement", statementValue)]
        case .array(let items):
            guard !items.isEmpty else { throw .invalidPolicy(element: "Statement", reason: "an empty array") }
            statementObjects = items.enumerated().map { ("Statement[\($0.offset)]", $0.element) }
        default:
            throw .invalidPolicy(element: "Statement", reason: "expected an object or an array of objects, got \(statementValue.typeName)")
        }
        let variables = version == "2012-10-17"
        var statements: [Statement] = []
        for (path, value) in statementObjects {
            statements.append(try Self.statement(value, path: path, policyVariables: variables))
        }
        self.version = version
        self.id = id
        self.statements = statements
    }

    /// The decision of this policy alone.
    public func evaluate(action: String, resource: String) -> IAMDecision {
        Self.evaluate([self], action: action, resource: resource)
    }

    /// The decision of several policies together (e.g. all the policies attached to a role):
    /// any matching `Deny` statement wins; else any matching `Allow`; else an implicit deny.
    public static func evaluate(_ policies: [IAMPolicy], action: String, resource: String) -> IAMDecision {
        let actionCharacters = Array(action.lowercased())
        let resourceCharacters = Array(resource)
        var allowed = false
        for policy in policies {
            for statement in policy.statements {
                switch (statement.effect, statement.applicability(action: actionCharacters, resource: resourceCharacters)) {
                case (_, .doesNotApply):
                    continue
                case (.deny, _):
                    // A Deny that may apply (its conditions are not evaluated) is taken as applying.
                    return .explicitDeny
                case (.allow, .applies):
                    allowed = true
                case (.allow, .mayApply):
                    // An Allow that may apply is taken as not applying.
                    continue
                }
            }
        }
        return allowed ? .allow : .implicitDeny
    }

    /// The ARN `rds-db:connect` is evaluated on:
    /// `arn:PARTITION:rds-db:REGION:ACCOUNT:dbuser:RESOURCE_ID/USER` (for RDS Proxy the resource
    /// id is the proxy's, `prx-...`).
    public static func rdsDBUserARN(partition: String = "aws", region: String, accountID: String, resourceID: String, user: String) -> String {
        "arn:\(partition):rds-db:\(region):\(accountID):dbuser:\(resourceID)/\(user)"
    }

    // MARK: Parsing statements

    static func refuseRepeatedMembers(_ members: [(key: String, value: JSON)], in path: String) throws(IAMPolicyError) {
        var seen: Set<String> = []
        for member in members where !seen.insert(member.key).inserted {
            throw .invalidPolicy(element: path == "policy" ? member.key : "\(path).\(member.key)", reason: "given more than once")
        }
    }

    static func statement(_ value: JSON, path: String, policyVariables: Bool) throws(IAMPolicyError) -> Statement {
        guard case .object(let members) = value else {
            throw .invalidPolicy(element: path, reason: "expected an object, got \(value.typeName)")
        }
        try refuseRepeatedMembers(members, in: path)
        var sid: String?
        var effect: Effect?
        var actions: [Pattern]?
        var notAction = false
        var resources: [Pattern]?
        var notResource = false
        var unevaluated = false
        for (key, value) in members {
            let element = "\(path).\(key)"
            switch key {
            case "Sid":
                guard let s = value.stringValue else { throw .invalidPolicy(element: element, reason: "expected a string, got \(value.typeName)") }
                sid = s
            case "Effect":
                guard let s = value.stringValue else { throw .invalidPolicy(element: element, reason: "expected a string, got \(value.typeName)") }
                guard let e = Effect(rawValue: s) else {
                    throw .invalidPolicy(element: element, reason: "expected \"Allow\" or \"Deny\", got \"\(s)\"")
                }
                effect = e
            case "Action", "NotAction":
                guard actions == nil else {
                    throw .invalidPolicy(element: path, reason: "has both Action and NotAction (give one)")
                }
                let texts = try strings(value, element: element)
                for text in texts where text != "*" {
                    let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
                    guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                        throw .invalidPolicy(element: element, reason: "\"\(text)\" is not \"*\" or \"service:action\"")
                    }
                }
                actions = texts.map { Pattern($0, caseInsensitive: true, policyVariables: false) }
                notAction = key == "NotAction"
            case "Resource", "NotResource":
                guard resources == nil else {
                    throw .invalidPolicy(element: path, reason: "has both Resource and NotResource (give one)")
                }
                let texts = try strings(value, element: element)
                resources = texts.map { Pattern($0, caseInsensitive: false, policyVariables: policyVariables) }
                notResource = key == "NotResource"
            case "Condition":
                guard case .object(let operators) = value else {
                    throw .invalidPolicy(element: element, reason: "expected an object, got \(value.typeName)")
                }
                if !operators.isEmpty { unevaluated = true }
            case "Principal", "NotPrincipal":
                unevaluated = true
            default:
                throw .invalidPolicy(
                    element: element,
                    reason: "unknown element (expected Sid, Effect, Action, NotAction, Resource, NotResource, Condition, Principal, NotPrincipal)")
            }
        }
        guard let effect else { throw .invalidPolicy(element: "\(path).Effect", reason: "missing") }
        guard let actions else { throw .invalidPolicy(element: "\(path).Action", reason: "missing (give Action or NotAction)") }
        guard let resources else { throw .invalidPolicy(element: "\(path).Resource", reason: "missing (give Resource or NotResource)") }
        return Statement(
            sid: sid, effect: effect, actions: actions, notAction: notAction, resources: resources, notResource: notResource,
            hasUnevaluatedConditions: unevaluated)
    }

    static func strings(_ value: JSON, element: String) throws(IAMPolicyError) -> [String] {
        switch value {
        case .string(let s):
            guard !s.isEmpty else { throw .invalidPolicy(element: element, reason: "an empty string") }
            return [s]
        case .array(let items):
            guard !items.isEmpty else { throw .invalidPolicy(element: element, reason: "an empty array") }
            var out: [String] = []
            for (i, item) in items.enumerated() {
                guard let s = item.stringValue else {
                    throw .invalidPolicy(element: "\(element)[\(i)]", reason: "expected a string, got \(item.typeName)")
                }
                guard !s.isEmpty else { throw .invalidPolicy(element: "\(element)[\(i)]", reason: "an empty string") }
                out.append(s)
            }
            return out
        default:
            throw .invalidPolicy(element: element, reason: "expected a string or an array of strings, got \(value.typeName)")
        }
    }
}
