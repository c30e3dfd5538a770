import ArgumentParser
import ConciergeAWS

/// `concierge generate-db-auth-token`: the token `aws rds generate-db-auth-token` prints, made
/// with the credentials of the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// optional `AWS_SESSION_TOKEN`). Exit statuses as the aws CLI's: 252 for a missing or invalid
/// argument, 255 when there are no credentials or no region.
struct GenerateDBAuthToken: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate-db-auth-token",
        abstract: "Generate an IAM authentication token for a database user (like aws rds generate-db-auth-token).",
        discussion: """
            The token is valid for 15 minutes; use it as the password. Credentials come from \
            AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
            """)

    // All optional for the parser, checked in run(): a missing one is a usage error (252).
    @Option(name: .long, help: ArgumentHelp("The host name of the database or proxy endpoint.", valueName: "hostname"))
    var hostname: String?

    @Option(name: .long, help: ArgumentHelp("The port the endpoint listens on.", valueName: "port"))
    var port: String?

    @Option(name: .long, help: ArgumentHelp("The database user name.", valueName: "username"))
    var username: String?

    @Option(name: .long, help: ArgumentHelp(
        "The region of the endpoint (default: $AWS_REGION, else $AWS_DEFAULT_REGION).", valueName: "region"))
    var region: String?

    func run() throws {
        let (hostname, port, username) = try validatedArguments()
        var region = self.region
        if region == nil || region!.isEmpty {
            region = [environment("AWS_REGION"), environment("AWS_DEFAULT_REGION")].compactMap { $0 }.first { !$0.isEmpty }
        }
        guard let region, !region.isEmpty else {
            printError("concierge: You must specify a region (--region, or AWS_REGION / AWS_DEFAULT_REGION).")
            throw ExitCode(AdminExit.unreachable)
        }
        guard let credentials = AWSCredentials.fromEnvironment() else {
            printError("concierge: Unable to locate credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials).")
            throw ExitCode(AdminExit.unreachable)
        }
        do {
            print(try RDSAuthToken.generate(hostname: hostname, port: port, username: username, region: region, credentials: credentials))
        } catch {
            // Descriptions never contain the secret key or the session token.
            printError("concierge: error: \(error.description)")
            throw ExitCode(AdminExit.usage)
        }
    }

    func validatedArguments() throws -> (hostname: String, port: Int, username: String) {
        var missing: [String] = []
        if hostname == nil { missing.append("--hostname") }
        if port == nil { missing.append("--port") }
        if username == nil { missing.append("--username") }
        guard missing.isEmpty else {
            printError("concierge: error: the following arguments are required: \(missing.joined(separator: ", "))")
            throw ExitCode(AdminExit.usage)
        }
        guard let hostname, !hostname.isEmpty, !hostname.contains(where: { "/?#@ \t\r\n".contains($0) }) else {
            throw usageError("--hostname", "expected a host name, got '\(self.hostname ?? "")'")
        }
        guard let text = port, text.allSatisfy({ $0.isASCII && $0.isNumber }), let port = Int(text), (1...65535).contains(port) else {
            throw usageError("--port", "expected a port number (1-65535), got '\(self.port ?? "")'")
        }
        guard let username, !username.isEmpty else {
            throw usageError("--username", "expected a user name, got ''")
        }
        return (hostname, port, username)
    }
}
