import NIOCore
import PostgresProxy
import PostgresWire

/// Builders for the database's messages and readers of what the machine writes.
enum Wire {
    static let untracked: Set<String> = ["server_version", "is_superuser"]

    static func configuration(
        password: String = "secret", initQuery: String = "", readMaxConnections: Bool = false,
        requestTLS: Bool = false, tlsMode: String = "disable", applicationName: String? = nil
    ) -> BackendStateMachine.Configuration {
        .init(
            username: "alice", password: password, database: "app", applicationName: applicationName,
            initQuery: initQuery, readMaxConnections: readMaxConnections, requestTLS: requestTLS, tlsMode: tlsMode,
            isTracked: { !untracked.contains($0) })
    }

    /// One message from the database.
    static func frame(_ build: (inout ByteBuffer) -> Void) -> PGFrame {
        var buffer = ByteBuffer()
        build(&buffer)
        return try! PGFraming.nextFrame(from: &buffer, maxMessageSize: 1 << 20)!
    }

    static func authentication(_ code: Int32, _ rest: [UInt8] = []) -> PGFrame {
        frame { buffer in
            buffer.writeInteger(UInt8(ascii: "R"))
            buffer.writeInteger(Int32(8 + rest.count))
            buffer.writeInteger(code)
            buffer.writeBytes(rest)
        }
    }

    static var authenticationOk: PGFrame { frame { PGEncode.authenticationOk(into: &$0) } }
    static func ready(_ status: PGTransactionStatus = .idle) -> PGFrame { frame { PGEncode.readyForQuery(status, into: &$0) } }
    static func parameter(_ name: String, _ value: String) -> PGFrame {
        frame { PGEncode.parameterStatus(name: name, value: value, into: &$0) }
    }
    static func keyData(_ processID: Int32, _ secretKey: Int32) -> PGFrame {
        frame { PGEncode.backendKeyData(processID: processID, secretKey: secretKey, into: &$0) }
    }
    static func error(_ fields: PGErrorFields) -> PGFrame { frame { PGEncode.errorResponse(fields, into: &$0) } }
    static func row(_ values: [String?]) -> PGFrame { frame { PGEncode.dataRow(values, into: &$0) } }
    static var closeComplete: PGFrame { frame { PGEncode.closeComplete(into: &$0) } }
    static func complete(_ tag: String) -> PGFrame { frame { PGEncode.commandComplete(tag: tag, into: &$0) } }

    /// The frontend messages (type and length framed) of a `.write` action.
    static func messages(_ action: BackendStateMachine.Action) -> [PGFrame] {
        guard case .write(var bytes) = action else { return [] }
        var frames: [PGFrame] = []
        while let frame = try! PGFraming.nextFrame(from: &bytes, maxMessageSize: 1 << 20) { frames.append(frame) }
        return frames
    }

    /// The Query texts of a `.write` action.
    static func queries(_ action: BackendStateMachine.Action) -> [String] {
        messages(action).filter { $0.type == PGMessageType.Frontend.query }.map { String(buffer: try! PGFrontend.Query($0.body).sql) }
    }

    /// The startup packet of a `.write` action.
    static func startup(_ action: BackendStateMachine.Action) -> StartupPacket? {
        guard case .write(var bytes) = action else { return nil }
        return try? PGFraming.nextStartupPacket(from: &bytes)
    }

    /// A machine logged in with trust (no password), set up, idle.
    static func idleMachine(
        _ configuration: BackendStateMachine.Configuration = Wire.configuration(), parameters: [(String, String)] = []
    ) throws -> BackendStateMachine {
        var machine = BackendStateMachine(configuration: configuration)
        _ = machine.connected()
        _ = try machine.messageReceived(authenticationOk)
        for (name, value) in parameters { _ = try machine.messageReceived(parameter(name, value)) }
        _ = try machine.messageReceived(keyData(42, 7))
        guard try machine.messageReceived(ready()) == .succeedSetup else { throw TestFailure("setup did not succeed") }
        return machine
    }

    /// An idle machine leased with no parameter to change.
    static func leasedMachine() throws -> BackendStateMachine {
        var machine = try idleMachine()
        guard machine.lease(parameters: [:], fromDefaults: false, takingStale: { [] }) == .ownerReady else {
            throw TestFailure("lease did not succeed")
        }
        return machine
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension BackendStateMachine.State {
    var name: String {
        switch self {
        case .connecting: return "connecting"
        case .negotiatingTLS: return "negotiatingTLS"
        case .authenticating: return "authenticating"
        case .startingUp: return "startingUp"
        case .setup(let step, _): return "setup(\(step))"
        case .idle: return "idle"
        case .leased: return "leased"
        case .preparing: return "preparing"
        case .resetting: return "resetting"
        case .checking: return "checking"
        case .closed: return "closed"
        case .modifying: return "modifying"
        }
    }
}
