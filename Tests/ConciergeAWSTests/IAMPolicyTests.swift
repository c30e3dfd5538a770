import Testing

@testable import ConciergeAWS

let connect = "rds-db:connect"
let appARN = "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/app"
let adminARN = "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/admin"

/// A one-statement policy.
func policy(_ effect: String = "Allow", action: String = "\"rds-db:connect\"", resource: String = "\"\(appARN)\"",
            actionKey: String = "Action", resourceKey: String = "Resource", extra: String = "",
            version: String = "2012-10-17") throws -> IAMPolicy {
    try IAMPolicy(json: """
        {"Version": "\(version)", "Statement": [{"Effect": "\(effect)", "\(actionKey)": \(action), "\(resourceKey)": \(resource)\(extra)}]}
        """)
}

func policyError(_ json: String) -> IAMPolicyError? {
    do {
        _ = try IAMPolicy(json: json)
        return nil
    } catch {
        return error
    }
}

@Suite("IAM policies")
struct IAMPolicyTests {
    @Test("a plain allow: exact action and resource")
    func plainAllow() throws {
        let p = try policy()
        #expect(p.evaluate(action: connect, resource: appARN) == .allow)
        #expect(p.evaluate(action: connect, resource: adminARN) == .implicitDeny)
        #expect(p.evaluate(action: "rds-db:connectx", resource: appARN) == .implicitDeny)
        #expect(p.evaluate(action: "rds:connect", resource: appARN) == .implicitDeny)
        #expect(p.evaluate(action: connect, resource: appARN + "x") == .implicitDeny)
        #expect(p.version == "2012-10-17")
        #expect(p.statements.count == 1)
        #expect(IAMPolicy.evaluate([], action: connect, resource: appARN) == .implicitDeny)
    }

    @Test("the AWS documentation's rds-db:connect example")
    func documentationExample() throws {
        let p = try IAMPolicy(json: """
            {
               "Version": "2012-10-17",
               "Statement": [
                  {
                     "Effect": "Allow",
                     "Action": [
                         "rds-db:connect"
                     ],
                     "Resource": [
                         "arn:aws:rds-db:us-east-2:1234567890:dbuser:db-ABCDEFGHIJKL01234/db_user"
                     ]
                  }
               ]
            }
            """)
        #expect(p.evaluate(action: connect, resource: "arn:aws:rds-db:us-east-2:1234567890:dbuser:db-ABCDEFGHIJKL01234/db_user") == .allow)
        #expect(p.evaluate(action: connect, resource: "arn:aws:rds-db:us-east-2:1234567890:dbuser:db-abcdefghijkl01234/db_user") == .implicitDeny)
    }

    @Test("actions match case-insensitively, with * and ?", arguments: [
        ("\"rds-db:connect\"", true), ("\"RDS-DB:Connect\"", true), ("\"rds-db:*\"", true), ("\"*\"", true),
        ("\"rds-db:conn*\"", true), ("\"rds-db:co?nect\"", true), ("\"rds-*:connect\"", true), ("\"*:connect\"", true),
        ("\"rds-db:c*t\"", true), ("[\"iam:*\", \"rds-db:connect\"]", true),
        ("\"rds-db:co?connect\"", false), ("\"rds:*\"", false), ("\"rds-db:connect?\"", false), ("\"rds-db:*x\"", false),
        ("[\"iam:*\", \"s3:*\"]", false),
    ])
    func actionMatching(_ action: String, _ allowed: Bool) throws {
        #expect(try policy(action: action).evaluate(action: connect, resource: appARN) == (allowed ? .allow : .implicitDeny))
    }

    @Test("resources match case-sensitively, with * and ? spanning : and /", arguments: [
        ("\"*\"", true),
        ("\"arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/*\"", true),
        ("\"arn:aws:rds-db:*:*:dbuser:*/app\"", true),
        ("\"arn:aws:rds-db:us-east-1:123456789012:*\"", true),
        ("\"arn:aws:rds-db:*\"", true),
        ("\"arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef?/app\"", true),
        ("\"arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-????????????????\(String(repeating: "?", count: 1))/app\"", true),
        ("\"arn:aws:rds-db:us-east-1:123456789012:dbuser:*/a??\"", true),
        ("\"arn:aws:rds-db:us-east-1:123456789012:dbuser:*/a?\"", false),
        ("\"arn:aws:rds-db:us-east-1:123456789012:dbuser:PRX-0123456789ABCDEF0/app\"", false),
        ("\"arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/App\"", false),
        ("\"arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/app/*\"", false),
        ("\"arn:aws:rds-db:us-west-2:*\"", false),
        ("[\"arn:aws:rds-db:us-west-2:*\", \"arn:aws:rds-db:us-east-1:*:dbuser:*/app\"]", true),
    ])
    func resourceMatching(_ resource: String, _ allowed: Bool) throws {
        #expect(try policy(resource: resource).evaluate(action: connect, resource: appARN) == (allowed ? .allow : .implicitDeny))
    }

    @Test("glob matching edge cases")
    func globs() {
        func m(_ pattern: String, _ value: String) -> Bool {
            IAMPolicy.Pattern(pattern, caseInsensitive: false, policyVariables: false).matches(Array(value))
        }
        #expect(m("*", ""))
        #expect(m("**", "abc"))
        #expect(!m("?", ""))
        #expect(m("a*b*c", "aXbYc"))
        #expect(m("a*b*c", "abc"))
        #expect(!m("a*b*c", "aXbY"))
        #expect(m("*ab", "aaab"))
        #expect(m("*a*a*a*", "banana a"))
        #expect(!m("a?c", "ac"))
        #expect(m("a?c", "a/c"))
        #expect(!m("abc", "ab"))
        #expect(!m("ab", "abc"))
        #expect(m("ü*", "über"))
        // A long value with many stars stays fast (no exponential backtracking).
        #expect(!m(String(repeating: "*a", count: 30) + "b", String(repeating: "a", count: 5000)))
    }

    @Test("NotAction: every action but those")
    func notAction() throws {
        #expect(try policy(action: "\"iam:*\"", resource: "\"*\"", actionKey: "NotAction").evaluate(action: connect, resource: appARN) == .allow)
        #expect(try policy(action: "\"rds-db:*\"", resource: "\"*\"", actionKey: "NotAction").evaluate(action: connect, resource: appARN) == .implicitDeny)
        let denyOthers = try IAMPolicy(json: """
            {"Version": "2012-10-17", "Statement": [
              {"Effect": "Allow", "Action": "*", "Resource": "*"},
              {"Effect": "Deny", "NotAction": ["rds-db:connect", "rds:Describe*"], "Resource": "*"}]}
            """)
        #expect(denyOthers.evaluate(action: connect, resource: appARN) == .allow)
        #expect(denyOthers.evaluate(action: "rds:DescribeDBProxies", resource: appARN) == .allow)
        #expect(denyOthers.evaluate(action: "rds:DeleteDBProxy", resource: appARN) == .explicitDeny)
    }

    @Test("NotResource: every resource but those")
    func notResource() throws {
        let p = try policy(resource: "\"\(adminARN)\"", resourceKey: "NotResource")
        #expect(p.evaluate(action: connect, resource: appARN) == .allow)
        #expect(p.evaluate(action: connect, resource: adminARN) == .implicitDeny)
        let deny = try IAMPolicy(json: """
            {"Version": "2012-10-17", "Statement": [
              {"Effect": "Allow", "Action": "rds-db:connect", "Resource": "*"},
              {"Effect": "Deny", "Action": "rds-db:connect", "NotResource": "arn:aws:rds-db:*:*:dbuser:*/app"}]}
            """)
        #expect(deny.evaluate(action: connect, resource: appARN) == .allow)
        #expect(deny.evaluate(action: connect, resource: adminARN) == .explicitDeny)
    }

    @Test("an explicit deny wins over any allow, within a policy and across policies")
    func denyWins() throws {
        let both = try IAMPolicy(json: """
            {"Version": "2012-10-17", "Statement": [
              {"Sid": "DenyAdmin", "Effect": "Deny", "Action": "rds-db:*", "Resource": "arn:aws:rds-db:*:*:dbuser:*/admin"},
              {"Sid": "AllowAll", "Effect": "Allow", "Action": "*", "Resource": "*"}]}
            """)
        #expect(both.evaluate(action: connect, resource: adminARN) == .explicitDeny)
        #expect(both.evaluate(action: connect, resource: appARN) == .allow)
        #expect(both.statements.map(\.sid) == ["DenyAdmin", "AllowAll"])

        let allow = try policy(resource: "\"*\"")
        let deny = try policy("Deny", resource: "\"\(adminARN)\"")
        #expect(IAMPolicy.evaluate([allow, deny], action: connect, resource: adminARN) == .explicitDeny)
        #expect(IAMPolicy.evaluate([deny, allow], action: connect, resource: adminARN) == .explicitDeny)
        #expect(IAMPolicy.evaluate([deny, allow], action: connect, resource: appARN) == .allow)
        #expect(IAMPolicy.evaluate([deny], action: connect, resource: appARN) == .implicitDeny)
        #expect(IAMPolicy.evaluate([deny], action: connect, resource: adminARN) == .explicitDeny)
    }

    @Test("Statement may be one object")
    func singleStatement() throws {
        let p = try IAMPolicy(json: #"{"Statement": {"Effect": "Allow", "Action": "rds-db:connect", "Resource": "*"}}"#)
        #expect(p.version == nil)
        #expect(p.evaluate(action: connect, resource: appARN) == .allow)
    }

    @Test("conditions are not evaluated: an Allow with one does not apply, a Deny with one does")
    func conditionsFailClosed() throws {
        let condition = #", "Condition": {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}"#
        #expect(try policy(resource: "\"*\"", extra: condition).evaluate(action: connect, resource: appARN) == .implicitDeny)
        #expect(try policy(resource: "\"*\"", extra: condition).statements[0].hasUnevaluatedConditions)
        let mixed = try IAMPolicy(json: """
            {"Version": "2012-10-17", "Statement": [
              {"Effect": "Allow", "Action": "rds-db:connect", "Resource": "*"},
              {"Effect": "Deny", "Action": "rds-db:connect", "Resource": "\(adminARN)", "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "false"}}}]}
            """)
        #expect(mixed.evaluate(action: connect, resource: adminARN) == .explicitDeny)
        #expect(mixed.evaluate(action: connect, resource: appARN) == .allow, "the Deny's resource does not match")
        #expect(mixed.evaluate(action: "rds:DescribeDBProxies", resource: adminARN) == .implicitDeny, "nor its action")
        // An empty Condition block is no condition.
        #expect(try policy(extra: #", "Condition": {}"#).evaluate(action: connect, resource: appARN) == .allow)
        // Principal / NotPrincipal (resource policies) are not evaluated either.
        #expect(try policy(extra: #", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}"#).evaluate(action: connect, resource: appARN) == .implicitDeny)
        #expect(try policy("Deny", extra: #", "NotPrincipal": {"AWS": "arn:aws:iam::123456789012:root"}"#).evaluate(action: connect, resource: appARN) == .explicitDeny)
    }

    @Test("policy variables (2012-10-17): unresolved ones fail closed; ${*} ${?} ${$} are literals")
    func policyVariables() throws {
        let variable = "\"arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/${aws:username}\""
        #expect(try policy(resource: variable).evaluate(action: connect, resource: appARN) == .implicitDeny)
        #expect(try policy("Deny", resource: variable).evaluate(action: connect, resource: appARN) == .explicitDeny)
        #expect(try policy(resource: "[\(variable), \"\(appARN)\"]").evaluate(action: connect, resource: appARN) == .allow)
        #expect(try policy(resource: variable, resourceKey: "NotResource").evaluate(action: connect, resource: appARN) == .implicitDeny)
        #expect(try policy("Deny", resource: variable, resourceKey: "NotResource").evaluate(action: connect, resource: appARN) == .explicitDeny)
        // In a 2008-10-17 policy ${...} is text.
        #expect(try policy("Deny", resource: variable, version: "2008-10-17").evaluate(action: connect, resource: appARN) == .implicitDeny)
        #expect(try policy(resource: variable, version: "2008-10-17").evaluate(
            action: connect, resource: "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/${aws:username}") == .allow)
        // Escapes.
        let star = try policy(resource: "\"arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/${*}${?}${$}\"")
        #expect(star.evaluate(action: connect, resource: "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/*?$") == .allow)
        #expect(star.evaluate(action: connect, resource: "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/abc") == .implicitDeny)
    }

    @Test("the rds-db:connect resource ARN")
    func arnHelper() {
        #expect(IAMPolicy.rdsDBUserARN(region: "us-east-1", accountID: "123456789012", resourceID: "prx-0123456789abcdef0", user: "app") == appARN)
        #expect(IAMPolicy.rdsDBUserARN(partition: "aws-cn", region: "cn-north-1", accountID: "1", resourceID: "prx-1", user: "u")
            == "arn:aws-cn:rds-db:cn-north-1:1:dbuser:prx-1/u")
    }

    @Test("invalid JSON: the position and the reason")
    func invalidJSON() {
        #expect(policyError("") == .invalidJSON(line: 1, column: 1, reason: "expected a value, found the end of the text"))
        #expect(policyError("{\"Version\": \"2012-10-17\",\n  \"Statement\": [}") == .invalidJSON(line: 2, column: 17, reason: "expected a value, found '}'"))
        #expect(policyError(#"{"Statement": [{"Effect": "Allow",}]}"#) == .invalidJSON(line: 1, column: 35, reason: "expected a member name in double quotes, found '}'"))
        #expect(policyError(#"{"Statement": []} x"#) == .invalidJSON(line: 1, column: 19, reason: "unexpected text after the JSON value"))
        #expect(policyError(#"{"Statement": "abc}"#) == .invalidJSON(line: 1, column: 15, reason: "unterminated string"))
        #expect(policyError("{'Statement': []}") == .invalidJSON(line: 1, column: 2, reason: "expected a member name in double quotes, found '''"))
        let text = policyError("{\"Version\": \"2012-10-17\",\n  \"Statement\": [}")?.description ?? ""
        #expect(text == "the policy is not valid JSON (line 2, column 17): expected a value, found '}'")
    }

    @Test("invalid policies name the element and the problem", arguments: [
        (#"[]"#, "policy", "expected a JSON object, got an array"),
        (#"{}"#, "Statement", "missing"),
        (#"{"Version": "2012-10-17"}"#, "Statement", "missing"),
        (#"{"Version": "2012-10-18", "Statement": []}"#, "Version", "expected \"2012-10-17\" or \"2008-10-17\", got \"2012-10-18\""),
        (#"{"Version": 2012, "Statement": []}"#, "Version", "expected a string, got a number"),
        (#"{"Statment": []}"#, "Statment", "unknown element (expected Version, Id, Statement)"),
        (#"{"Statement": [], "Statement": []}"#, "Statement", "given more than once"),
        (#"{"Statement": []}"#, "Statement", "an empty array"),
        (#"{"Statement": "Allow"}"#, "Statement", "expected an object or an array of objects, got a string"),
        (#"{"Statement": ["Allow"]}"#, "Statement[0]", "expected an object, got a string"),
        (#"{"Statement": [{"Action": "*", "Resource": "*"}]}"#, "Statement[0].Effect", "missing"),
        (#"{"Statement": [{"Effect": "allow", "Action": "*", "Resource": "*"}]}"#, "Statement[0].Effect", "expected \"Allow\" or \"Deny\", got \"allow\""),
        (#"{"Statement": [{"Effect": true, "Action": "*", "Resource": "*"}]}"#, "Statement[0].Effect", "expected a string, got a boolean"),
        (#"{"Statement": [{"Effect": "Allow", "Resource": "*"}]}"#, "Statement[0].Action", "missing (give Action or NotAction)"),
        (#"{"Statement": [{"Effect": "Allow", "Action": "*"}]}"#, "Statement[0].Resource", "missing (give Resource or NotResource)"),
        (#"{"Statement": [{"Effect": "Allow", "Action": "*", "NotAction": "s3:*", "Resource": "*"}]}"#, "Statement[0]", "has both Action and NotAction (give one)"),
        (#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "NotResource": "x"}]}"#, "Statement[0]", "has both Resource and NotResource (give one)"),
        (#"{"Statement": [{"Effect": "Allow", "Action": 5, "Resource": "*"}]}"#, "Statement[0].Action", "expected a string or an array of strings, got a number"),
        (#"{"Statement": [{"Effect": "Allow", "Action": ["rds-db:connect", null], "Resource": "*"}]}"#, "Statement[0].Action[1]", "expected a string, got null"),
        (#"{"Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]}"#, "Statement[0].Action", "an empty array"),
        (#"{"Statement": [{"Effect": "Allow", "Action": "", "Resource": "*"}]}"#, "Statement[0].Action", "an empty string"),
        (#"{"Statement": [{"Effect": "Allow", "Action": "rdsdbconnect", "Resource": "*"}]}"#, "Statement[0].Action", "\"rdsdbconnect\" is not \"*\" or \"service:action\""),
        (#"{"Statement": [{"Effect": "Allow", "Action": ":connect", "Resource": "*"}]}"#, "Statement[0].Action", "\":connect\" is not \"*\" or \"service:action\""),
        (#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": ["*", 1]}]}"#, "Statement[0].Resource[1]", "expected a string, got a number"),
        (#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resources": "*"}]}"#, "Statement[0].Resources", "unknown element (expected Sid, Effect, Action, NotAction, Resource, NotResource, Condition, Principal, NotPrincipal)"),
        (#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": "x"}]}"#, "Statement[0].Condition", "expected an object, got a string"),
        (#"{"Statement": [{"Effect": "Allow", "Effect": "Deny", "Action": "*", "Resource": "*"}]}"#, "Statement[0].Effect", "given more than once"),
        (#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}, {"Effect": "Deny", "Action": "*"}]}"#, "Statement[1].Resource", "missing (give Resource or NotResource)"),
        (#"{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Sid": 1}}"#, "Statement.Sid", "expected a string, got a number"),
    ])
    func invalidPolicies(_ json: String, _ element: String, _ reason: String) {
        #expect(policyError(json) == .invalidPolicy(element: element, reason: reason))
        #expect(policyError(json)?.description == "\(element): \(reason)")
    }
}
