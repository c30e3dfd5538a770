import NIOCore
import PostgresProxy
import SQLClassifier
import Testing

@testable import ConciergeRuntime
@testable import PostgresServer

/// What an idle client holds (README "Performance", memory per idle client): these sizes are
/// paid once per connected client, so a field added to the session shows here.
@Suite struct IdleClientMemoryTests {
    /// The bytes of a class instance, from its metadata (Swift's class metadata on platforms
    /// without Objective-C interop: kind, superclass, flags, instance address point, then the
    /// instance size).
    static func instanceSize(of type: AnyClass) -> Int {
        #if os(Linux)
        let metadata = unsafeBitCast(type, to: UnsafeRawPointer.self)
        return Int(metadata.load(fromByteOffset: 24, as: UInt32.self))
        #else
        return 0
        #endif
    }

    @Test func sessionSizes() {
        let session = Self.instanceSize(of: ClientSession.self)
        let machine = MemoryLayout<ClientSessionMachine>.size
        let login = MemoryLayout<ClientLogin>.size
        print("ClientSession instance \(session) bytes; ClientSessionMachine \(machine); ClientLogin \(login)")
        print("  ResponseTracker \(MemoryLayout<ResponseTracker>.size), PinState \(MemoryLayout<PinState>.size), StatementCatalogue \(MemoryLayout<StatementCatalogue>.size), SessionParameters \(MemoryLayout<SessionParameters>.size), ResetWindow? \(MemoryLayout<ResetWindow?>.size), ClassifierOptions \(MemoryLayout<ClassifierOptions>.size), State \(MemoryLayout<ClientSessionMachine.State>.size), Resets \(MemoryLayout<Resets>.size), PendingSetting? \(MemoryLayout<SessionParameters.PendingSetting?>.size), ByteBuffer? \(MemoryLayout<ByteBuffer?>.size)")
        #if os(Linux)
        #expect(session > 0)
        #endif
    }

    /// The receive allocator is kept in every channel as an existential: it must fit in the
    /// existential's inline buffer (three words), or each channel boxes it on the heap.
    @Test func receiveAllocatorIsStoredInline() {
        #expect(MemoryLayout<ClientReceiveAllocator>.size <= 3 * MemoryLayout<Int>.size)
    }

    /// The same sizes as NIO's adaptive rule with 64 / 128 / 65,536.
    @Test func receiveAllocatorFollowsTheAdaptiveRule() {
        var ours = ClientReceiveAllocator()
        var nio = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 128, maximum: 65_536)
        let reads = [128, 256, 512, 10, 10, 10, 10, 10, 10, 10, 65_536, 65_536, 65_536, 65_536, 65_536, 65_536, 65_536, 65_536, 100, 30_000, 5, 5]
        for bytes in reads {
            #expect(ours.nextBufferSize() == nio.nextBufferSize())
            #expect(ours.record(actualReadBytes: bytes) == nio.record(actualReadBytes: bytes))
        }
        #expect(ours.nextBufferSize() == nio.nextBufferSize())
        #expect(ours.buffer(allocator: ByteBufferAllocator()).capacity >= ours.nextBufferSize()!)
    }
}
