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

// The leased backend's events: its packets fed to the session machine and forwarded (OKs cut
// for clients without CLIENT_SESSION_TRACK), its read-complete, its loss.
extension MySQLClientSession {
    // MARK: MySQLBackendOwner

    func backendDidRead(_ packets: ByteBuffer) {
        guard let context, backend != nil else { return }
        var buffer = packets
        var forwardStart = buffer.readerIndex
        var release = false
        var reusable = true
        while let header = buffer.peekMySQLPacketHeader(), buffer.readableBytes >= 4 + header.length {
            let packetStart = buffer.readerIndex
            let payload = buffer.getSlice(at: packetStart + 4, length: header.length)!
            buffer.moveReaderIndex(forwardBy: 4 + header.length)
            let continuation = serverPacketContinues
            serverPacketContinues = header.length == MySQLPacketHeader.maxPacketPayload
            // The tracker reads a logical payload's first packet only: a 0xFFFFFF-byte packet is
            // never an EOF or OK, which is all it needs to know of a long row.
            if continuation { continue }
            // In place (`machine!`), as in `handleCommand`: no copy per packet.
            guard machine != nil else { return }
            let action: MySQLSessionMachine.Action
            do {
                action = try machine!.serverPacket(payload)
            } catch {
                log(.warning, "database sent a malformed packet", ["concierge.error": "\(error)"])
                releaseBackend(reusable: false)
                fail(with: MySQLClientErrors.backendLost)
                return
            }
            let cutSessionState = machine!.lastPacketWasOK && !machine!.capabilities.contains(.sessionTrack)
            if machine!.lastPacketEndedResponse { responseEnded() }
            if cutSessionState, action.forwardsToClient,
                rewriteOK(payload, sequenceID: header.sequenceID, packets, from: forwardStart, to: packetStart, context: context)
            {
                forwardStart = buffer.readerIndex
                if case .forwardToClientAndRelease = action {
                    release = true
                    break
                }
                continue
            }
            switch action {
            case .forwardToClient:
                if machine!.needsResume {
                    // Held commands go now: after what was forwarded so far.
                    flushForwarded(packets, from: forwardStart, to: buffer.readerIndex, context: context)
                    forwardStart = buffer.readerIndex
                    resumeHeldCommands(context: context)
                    if closed || self.backend == nil { return }
                }
                continue
            case .forwardToClientRewritingStatementID(let id):
                // A prepare's OK: the client sees the id the proxy gave its statement.
                flushForwarded(packets, from: forwardStart, to: packetStart, context: context)
                forwardStart = buffer.readerIndex
                var out = context.channel.allocator.buffer(capacity: header.length + 4)
                out.writeMySQLPacket(sequenceID: header.sequenceID, payload: payload)
                out.setInteger(id, at: out.readerIndex + 5, endianness: .little)
                context.write(wrapOutboundOut(out), promise: nil)
                needsFlushToClient = true
                if machine!.needsResume {
                    resumeHeldCommands(context: context)
                    if closed || self.backend == nil { return }
                }
                continue
            case .forwardToClientAndRelease:
                release = true
            case .forwardToClientAndDiscard:
                release = true
                reusable = false
            case .none:
                // The proxy's own statement's answer: not the client's.
                flushForwarded(packets, from: forwardStart, to: packetStart, context: context)
                forwardStart = buffer.readerIndex
                if machine!.needsResume {
                    resumeHeldCommands(context: context)
                    if closed || self.backend == nil { return }
                }
            default:
                flushForwarded(packets, from: forwardStart, to: packetStart, context: context)
                forwardStart = buffer.readerIndex
                run(action, context: context)
                resumeHeldCommands(context: context)
                if closed || self.backend == nil { return }
            }
            if release { break }
        }
        flushForwarded(packets, from: forwardStart, to: buffer.readerIndex, context: context)
        if release {
            context.flush()
            releaseBackend(reusable: reusable)
        } else if draining, machine?.isBetweenTransactions == true {
            // A pinned client's command (it keeps its backend) was its last.
            context.flush()
            closeIfDrained()
        }
        if deferredChangeUser != nil { resumeDeferredChangeUser() }
        if deferredCommand != nil { answerDeferredCommand(context: context) }
    }

    /// The database finished answering one of the client's commands: its response time is
    /// recorded (each response, in a transaction or pinned too, as QueryDatabaseResponseLatency
    /// counts them), and the client's idle time starts now.
    func responseEnded() {
        let now = NIODeadline.now()
        loopSessions.queryLatency.record(nanoseconds: (now - queryStarted).nanoseconds)
        lastActivity = now
    }

    /// An OK packet for a client that did not negotiate CLIENT_SESSION_TRACK: backends always
    /// do (the proxy's state tracking needs it), so an OK that reports session-state changes
    /// carries them after its info string, where such a client would read them as part of the
    /// info. The packet goes out cut after the info string, with SERVER_SESSION_STATE_CHANGED
    /// cleared: what the server sends a client that did not ask. Other OKs are forwarded as they
    /// are (MariaDB writes the info length-encoded either way). Only when state changed: a SET,
    /// a USE, not per statement.
    func rewriteOK(
        _ payload: ByteBuffer, sequenceID: UInt8, _ packets: ByteBuffer, from start: Int, to end: Int,
        context: ChannelHandlerContext
    ) -> Bool {
        var reader = payload
        reader.moveReaderIndex(forwardBy: 1)
        guard reader.readMySQLLengthEncodedInteger() != nil, reader.readMySQLLengthEncodedInteger() != nil else { return false }
        let statusOffset = reader.readerIndex - payload.readerIndex
        guard let raw = reader.readInteger(endianness: .little, as: UInt16.self),
              MySQLServerStatus(rawValue: raw).contains(.sessionStateChanged),
              reader.readInteger(endianness: .little, as: UInt16.self) != nil
        else { return false }
        let afterWarnings = reader.readerIndex
        guard let info = reader.readMySQLLengthEncodedSlice() else { return false }
        flushForwarded(packets, from: start, to: end, context: context)
        // An empty info string is left out, as the server does for such a client.
        let length = (info.readableBytes == 0 ? afterWarnings : reader.readerIndex) - payload.readerIndex
        var cut = payload.getSlice(at: payload.readerIndex, length: length)!
        cut.setInteger(raw & ~MySQLServerStatus.sessionStateChanged.rawValue, at: cut.readerIndex + statusOffset, endianness: .little)
        var out = context.channel.allocator.buffer(capacity: length + 4)
        out.writeMySQLPacket(sequenceID: sequenceID, payload: cut)
        context.write(wrapOutboundOut(out), promise: nil)
        needsFlushToClient = true
        return true
    }

    func flushForwarded(_ packets: ByteBuffer, from start: Int, to end: Int, context: ChannelHandlerContext) {
        guard end > start, let slice = packets.getSlice(at: start, length: end - start) else { return }
        context.write(wrapOutboundOut(slice), promise: nil)
        needsFlushToClient = true
    }

    func backendDidReadComplete() {
        if needsFlushToClient {
            needsFlushToClient = false
            context?.flush()
        }
    }

    /// A backend kept only for the client's diagnostics (its last response left warnings or an
    /// error) whose pool retired it since does not run the client's next command: the writer
    /// changed or became read-only, and it is connected to a server that no longer takes writes
    /// (a client whose INSERT got the demoted primary's 1290 would otherwise send every next
    /// one there, for ever). It goes, and the command borrows another.
    func dropStaleDiagnosticsHold() {
        guard let backend, let pool = borrowPool, backend.generation != pool.generation,
              case .release(let reusable) = machine!.dropDiagnosticsHold()
        else { return }
        releaseBackend(reusable: reusable)
    }

    func backendDidClose() {
        guard backend != nil, var machine, let context else { return }
        backend = nil
        runtime.backendConnectionLost()
        let action = machine.backendLost()
        self.machine = machine
        if case .close = action { log(.warning, "database connection lost while serving this client") }
        run(action, context: context)
        if deferredChangeUser != nil { resumeDeferredChangeUser() }
        if deferredCommand != nil { answerDeferredCommand(context: context) }
    }
}
