import ConciergeAuth
import ConciergeConfig
import ConciergeRuntime
import ConnectionPool
import Logging
import MySQLProxy
import MySQLWire
import NIOCore
import NIOSSL
import ProxyCore
import SQLClassifier

// The client's login: the handshake's environment, and the login machine's actions carried out.
extension MySQLClientSession {
    // MARK: Login

    func loginEnvironment() -> MySQLClientLogin.Environment {
        let runtime = self.runtime
        let users = runtime.users
        return MySQLClientLogin.Environment(
            policy: AuthPolicy(requireTLS: runtime.requireTLS), clientLimitExceeded: runtime.clientLimitExceeded,
            clientLimit: runtime.configuration.maxClientConnections,
            user: { name in
                users.entry(for: name).map { MySQLClientLogin.User(password: $0.keys.password, iamRequired: $0.iamRequired) }
            })
    }

    /// Whether `bytes` start with a TLS handshake record (content type 22, version 3.x).
    static func beginsTLSHandshake(_ bytes: ByteBuffer) -> Bool {
        guard let type = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self),
              let major = bytes.getInteger(at: bytes.readerIndex + 1, as: UInt8.self)
        else { return false }
        return type == 0x16 && major == 0x03
    }

    /// Carries out what the login machine decided.
    func run(_ action: MySQLClientLogin.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .write(let bytes):
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .startTLS:
            guard let tls = runtime.serverTLSContext else {
                login.tlsFailed()
                context.close(promise: nil)
                return
            }
            do {
                try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls), position: .first)
            } catch {
                log(.error, "could not start TLS", ["concierge.error": "\(error)"])
                login.tlsFailed()
                context.close(promise: nil)
            }
        case .verifyIAMToken(let token):
            // The session's `user` is set once login completes; the machine knows it since the
            // handshake response.
            user = login.user
            switch runtime.authenticateIAM(token: token, user: login.user, endpoint: endpoint) {
            case .allowed(let principal):
                log(.debug, "IAM authentication succeeded", ["concierge.principal": "\(principal)"])
                run(login.iamResult(ok: true), context: context)
            case .refused(let reason):
                run(login.iamResult(ok: false, reason: reason), context: context)
            }
        case .loggedIn(let result, let write):
            if let write { context.write(wrapOutboundOut(write), promise: nil) }
            loggedIn(result, context: context)
        case .fail(let packet, _, let reason):
            if reason.countsAsFailedAuthentication {
                // A COM_CHANGE_USER's failure is not a connection's setup failing.
                if !changingUser { runtime.metrics.clientConnectionsSetupFailedAuth[endpoint].increment() }
                log(.info, changingUser ? "client change of user failed" : "client authentication failed",
                    ["concierge.reason": "\(reason)"])
            }
            context.writeAndFlush(wrapOutboundOut(packet), promise: nil)
            closeGracefully()
        }
    }

    func loggedIn(_ result: MySQLClientLogin.LoginResult, context: ChannelHandlerContext) {
        loginIsChangeUser = changingUser
        changingUser = false
        lastLogin = result
        user = result.user
        let profile = MySQLClientProfile(negotiated: result.capabilities, characterSet: result.characterSet)
        let schema = result.database ?? ""
        // Clients with a login schema share one pool (the schema is restored per lease); those
        // without one have their own, whose backends never keep a schema (MySQL cannot go back
        // to "none", so such a backend is not reused once a USE selected one).
        poolKey = runtime.poolKeys.key(
            user: result.user, database: schema.isEmpty ? "" : MySQLEngine.anySchema, variant: profile.description)
        machine = MySQLSessionMachine(capabilities: result.capabilities, loginSchema: schema)
        loginClassifierOptions = runtime.engine.classifierOptions
        classifierOptionsCache = loginClassifierOptions
        classifierOptionsMode = nil
        let ok = MySQLOKPacket(affectedRows: 0, lastInsertID: 0, status: .autocommit, warnings: 0, info: "", sessionStateChanges: [])
        var out = context.channel.allocator.buffer(capacity: 16)
        out.writeMySQLPacket(sequenceID: result.nextSequenceID) { ok.encode(into: &$0, capabilities: result.capabilities) }
        if !schema.isEmpty, !runtime.engine.schemaVerified(user: result.user, schema: schema) {
            // First login with this schema for this user: checked on the database before the OK
            // (a server refuses a login naming a schema that is not there, or not the user's).
            pendingLogin = (out, result.nextSequenceID)
            run(machine!.verifyLoginSchema(), context: context)
            return
        }
        completeLogin(out, context: context)
    }

    /// Sends the login OK; commands the client sent before it are read now.
    func completeLogin(_ ok: ByteBuffer, context: ChannelHandlerContext) {
        pendingLogin = nil
        context.writeAndFlush(wrapOutboundOut(ok), promise: nil)
        if loginIsChangeUser {
            log(.debug, "client changed user")
        } else {
            runtime.metrics.clientConnectionsSetupSucceeded[endpoint].increment()
            log(.debug, "client logged in")
        }
        if var pending = cumulation, !closed {
            cumulation = nil
            processIncoming(&pending, context: context)
        }
    }
}

// COM_CHANGE_USER: answered by the proxy, as a login on the connection the client has.
extension MySQLClientSession {
    /// The client logs in again (`bytes`: the command's packet): its pins and backend go
    /// (`MySQLSessionMachine.changeUser`), then a change-user login machine runs the exchange
    /// against the same users and secrets as a login (native, caching_sha2, IAM); its
    /// `.loggedIn` gives the client a new session machine, the new user's pool and login
    /// defaults (`loggedIn`), its `.fail` the ERR and the connection's end, as MySQL does.
    func changeUser(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        guard machine != nil, let previous = lastLogin else { return }
        guard machine!.isBetweenCommands else {
            // Pipelined behind commands still under way: their answers come first.
            deferredChangeUser = bytes
            return
        }
        if case .release(let reusable) = machine!.changeUser() { releaseBackend(reusable: reusable) }
        guard !closed, let header = bytes.peekMySQLPacketHeader(),
              let payload = bytes.getSlice(at: bytes.readerIndex + 4, length: bytes.readableBytes - 4)
        else { return }
        login = MySQLClientLogin(configuration: login.configuration, changingUserOf: previous, greetingNonce: login.greetingNonce)
        changingUser = true
        changeUserStarted = .now()
        log(.debug, "client changes user")
        run(login.changeUserReceived(MySQLPacket(sequenceID: header.sequenceID, payload: payload), environment: loginEnvironment()),
            context: context)
    }

    /// A deferred COM_CHANGE_USER is answered once the commands before it are over; the packets
    /// the client sent after it are read then.
    func resumeDeferredChangeUser() {
        guard let bytes = deferredChangeUser, let context, !closed, machine?.isBetweenCommands == true else { return }
        deferredChangeUser = nil
        changeUser(bytes, context: context)
        if var pending = cumulation, !closed {
            cumulation = nil
            processIncoming(&pending, context: context)
        }
    }
}
