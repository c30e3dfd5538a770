import ConciergeRuntime
import Logging
import NIOCore
import PostgresProxy
import PostgresWire
import SQLClassifier

// The backend's answers relayed to the client: `ClientSessionMachine.relay` decides, message by
// message, what is forwarded, dropped or replaced (ClientSessionMachine+Relay.swift); the handler
// frames the burst and writes runs of its original bytes (slices, no copy), cut where the machine
// says, with the proxy's own answers in their places.
extension ClientSession {
    /// Forwards backend responses while the tracker holds extended-protocol entries (or a reset
    /// is watched). Forwarded runs stay slices of `bytes` (no copy).
    func relayTracked(_ bytes: ByteBuffer, from backend: BackendConnection, context: ChannelHandlerContext) {
        var view = bytes
        var runStart = view.readerIndex
        func writeRun(upTo end: Int) {
            if end > runStart, let run = bytes.getSlice(at: runStart, length: end - runStart) {
                context.write(wrapOutboundOut(run), promise: nil)
                needsFlushToClient = true
            }
            runStart = end
        }
        while true {
            if responses.headIsLocal {
                writeRun(upTo: view.readerIndex)
                emitLocalResponses()
            }
            // The backend connection framed these bytes already; a failure cannot happen here.
            guard let (type, size) = try? PGFraming.peekFrame(in: view, maxMessageSize: Int(Int32.max)) else { break }
            let frameStart = view.readerIndex
            view.moveReaderIndex(forwardBy: size)
            let relayed = type == PGMessageType.Backend.errorResponse
                ? machine.relayError(in: bytes, at: frameStart, size: size, cache: &backend.statementCache)
                : machine.relay(type, in: bytes, at: frameStart, size: size)
            // What the machine did that is logged (rare).
            if !relayed.unpinned.isEmpty || !relayed.unpinnedThen.isEmpty {
                logUnpinned(relayed.unpinned, remaining: pinReasons.union(relayed.unpinnedThen))
                logUnpinned(relayed.unpinnedThen)
            }
            if relayed.statementsInvalidated {
                log(.warning, "the database reported an error about one of the proxy's statements; its statements on this backend will be prepared again", [
                    "concierge.backend": "\(backend.id)"
                ])
            }
            if relayed.duplicateParseAccepted {
                log(.warning, "a Parse of a statement name in use was accepted by the database")
            }
            switch relayed.action {
            case .forward:
                break
            case .drop:
                writeRun(upTo: frameStart)
                runStart = view.readerIndex
            case .replace(let replacement):
                writeRun(upTo: frameStart)
                runStart = view.readerIndex
                context.write(wrapOutboundOut(replacement), promise: nil)
                needsFlushToClient = true
            case .closeResetWindowBefore(let status):
                writeRun(upTo: frameStart)
                closeResetWindow(status: status, context: context, backend: backend)
            }
            if let shape = relayed.shape { machine.recordShape(shape, cache: &backend.statementCache) }
        }
        writeRun(upTo: view.readerIndex)
        emitLocalResponses()
    }
}
