#if canImport(Glibc)
import Glibc
#endif

// floor handshake-nio PORT THREADS USER PASSWORD
// floor handshake-raw PORT THREADS USER PASSWORD
// floor pooler-raw    PORT THREADS USER PASSWORD BACKEND_PORT DATABASE CONNECTIONS_PER_THREAD
// floor pooler-nio    PORT THREADS USER PASSWORD BACKEND_PORT DATABASE CONNECTIONS_PER_THREAD
let arguments = CommandLine.arguments
guard arguments.count >= 6, let port = Int(arguments[2]), let threads = Int(arguments[3]) else {
    print("usage: floor handshake-nio|handshake-raw|pooler-raw|pooler-nio PORT THREADS USER PASSWORD [BACKEND_PORT DATABASE PER_THREAD]")
    exit(2)
}
let storedHash = Wire.storedHash(user: arguments[4], password: arguments[5])

final class ThreadBody: @unchecked Sendable {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

func startThread(_ body: @escaping () -> Void) {
    var thread = pthread_t()
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    pthread_create(&thread, nil, { argument in
        Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue().body()
        return nil
    }, box)
}

switch arguments[1] {
case "handshake-nio":
    try NIOHandshakeServer.run(port: port, threads: threads, storedHash: storedHash)
case "handshake-raw", "pooler-raw", "pooler-nio":
    var settings: BackendSettings?
    if arguments[1] != "handshake-raw" {
        guard arguments.count >= 9, let backendPort = Int(arguments[6]), let perThread = Int(arguments[8]) else {
            print("\(arguments[1]) needs BACKEND_PORT DATABASE CONNECTIONS_PER_THREAD")
            exit(2)
        }
        settings = BackendSettings(port: backendPort, user: arguments[4], database: arguments[7],
                                   password: arguments[5], connectionsPerLoop: perThread)
    }
    if arguments[1] == "pooler-nio", let settings {
        try NIOPooler.run(port: port, threads: threads, storedHash: storedHash, backends: settings)
    }
    for _ in 0..<threads {
        let loop = RawLoop(port: port, storedHash: storedHash, backends: settings)
        startThread { loop.run() }
    }
    while true { pause() }
default:
    print("unknown mode \(arguments[1])")
    exit(2)
}
