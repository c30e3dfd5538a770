import CFloorEpoll
#if canImport(Glibc)
import Glibc
#endif

/// Where the pooler's backends are and how it logs in to them (md5).
struct BackendSettings: Sendable {
    var port: Int
    var user: String
    var database: String
    var password: String
    var connectionsPerLoop: Int
}

/// One thread with its own epoll set and SO_REUSEPORT listener, like PgBouncer's single thread
/// (run two for two cores). Without backends it is the handshake server; with them, a minimal
/// transaction pooler: a client's simple-protocol bytes go to a backend leased at its first
/// message and released at ReadyForQuery(idle). Writes assume loopback never fills a socket
/// buffer with these small messages. No TLS, no pinning, no extended protocol bookkeeping:
/// a floor, not a proxy.
final class RawLoop {
    private final class Client {
        var buffer: [UInt8] = []
        var started = false
        var salt: [UInt8]? = nil
        var loggedIn = false
        var backend: Int32 = -1
        var waiting = false
    }

    private final class Backend {
        var client: Int32 = -1
        var remaining = 0       // bytes left of the current message body
        var header: [UInt8] = []
        var lastType: UInt8 = 0
    }

    private let port: Int
    private let storedHash: [UInt8]
    private let backendSettings: BackendSettings?
    private var epoll: Int32 = -1
    private var listener: Int32 = -1
    private var clients: [Client?] = Array(repeating: nil, count: 1 << 16)
    private var backends: [Backend?] = Array(repeating: nil, count: 1 << 16)
    private var idle: [Int32] = []
    private var waiters: [Int32] = []
    private var waitersHead = 0
    private var loginOK: [UInt8] = Wire.loginOK(parameterStatus: Wire.defaultParameterStatus)
    private var readBuffer = [UInt8](repeating: 0, count: 1 << 16)
    private var nextSalt: UInt32 = 1

    init(port: Int, storedHash: [UInt8], backends: BackendSettings?) {
        self.port = port
        self.storedHash = storedHash
        self.backendSettings = backends
    }

    func run() -> Never {
        epoll = epoll_create1(0)
        listener = Self.listen(port: port)
        floor_epoll_add(epoll, listener)
        if let settings = backendSettings {
            for _ in 0..<settings.connectionsPerLoop {
                let (fd, parameterStatus) = Self.connectBackend(settings)
                loginOK = Wire.loginOK(parameterStatus: parameterStatus)
                backends[Int(fd)] = Backend()
                idle.append(fd)
                floor_epoll_add(epoll, fd)
            }
        }
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        while true {
            let count = epoll_wait(epoll, &events, Int32(events.count), -1)
            for index in 0..<max(0, Int(count)) {
                let fd = floor_event_fd(&events[index])
                if fd == listener {
                    acceptAll()
                } else if backends[Int(fd)] != nil {
                    backendReadable(fd)
                } else if clients[Int(fd)] != nil {
                    clientReadable(fd)
                }
            }
        }
    }

    private func acceptAll() {
        var one: Int32 = 1
        while true {
            let fd = floor_accept(listener)
            guard fd >= 0 else { return }
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
            floor_epoll_add(epoll, fd)
            clients[Int(fd)] = Client()
        }
    }

    private func clientReadable(_ fd: Int32) {
        let client = clients[Int(fd)]!
        let count = read(fd, &readBuffer, readBuffer.count)
        guard count > 0 else { return closeClient(fd) }
        // The common case: a logged-in client with a backend sends a query; forward as is.
        if client.loggedIn, client.backend >= 0, client.buffer.isEmpty, readBuffer[0] != 0x58 {
            readBuffer.withUnsafeBytes { Self.writeAll(client.backend, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            return
        }
        client.buffer += readBuffer[0..<count]
        if !client.started {
            guard client.buffer.count >= 4, client.buffer.count >= Wire.int32(client.buffer, at: 0) else { return }
            client.buffer.removeFirst(Wire.int32(client.buffer, at: 0))
            client.started = true
            nextSalt &+= 2_654_435_761
            let salt = Wire.bigEndian(Int(nextSalt))
            client.salt = salt
            Self.writeAll(fd, Wire.authenticationMD5(salt: salt))
            return
        }
        if let salt = client.salt {
            guard client.buffer.count >= 5, client.buffer.count >= Wire.int32(client.buffer, at: 1) + 1 else { return }
            let length = Wire.int32(client.buffer, at: 1)
            let response = Array(client.buffer[5..<length])  // without the terminating zero
            client.buffer.removeFirst(length + 1)
            guard client.buffer.first != 0x58, response == Wire.md5Response(storedHash: storedHash, salt: salt) else {
                return closeClient(fd)
            }
            client.salt = nil
            client.loggedIn = true
            Self.writeAll(fd, loginOK)
        }
        guard let type = client.buffer.first else { return }
        if type == 0x58 || backendSettings == nil { return closeClient(fd) }
        if client.backend >= 0 {
            Self.writeAll(client.backend, client.buffer)
            client.buffer.removeAll(keepingCapacity: true)
        } else if !client.waiting {
            if let backend = idle.popLast() { assign(backend, to: fd, client) } else {
                client.waiting = true
                waiters.append(fd)
            }
        }
    }

    private func backendReadable(_ fd: Int32) {
        let backend = backends[Int(fd)]!
        let count = read(fd, &readBuffer, readBuffer.count)
        guard count > 0 else { fatalError("a backend connection closed") }
        if backend.client >= 0 {
            readBuffer.withUnsafeBytes { Self.writeAll(backend.client, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        }
        // Find message boundaries: the backend is free after ReadyForQuery with status idle.
        var offset = 0
        var ready = false
        while offset < count {
            if backend.remaining > 0 {
                let take = min(backend.remaining, count - offset)
                backend.remaining -= take
                if backend.remaining == 0, backend.lastType == 0x5A { ready = readBuffer[offset + take - 1] == 0x49 }
                offset += take
                continue
            }
            backend.header.append(readBuffer[offset])
            offset += 1
            if backend.header.count == 5 {
                backend.lastType = backend.header[0]
                backend.remaining = Wire.int32(backend.header, at: 1) - 4
                backend.header.removeAll(keepingCapacity: true)
                ready = false
            }
        }
        if ready { release(fd) }
    }

    private func assign(_ backend: Int32, to fd: Int32, _ client: Client) {
        client.backend = backend
        backends[Int(backend)]!.client = fd
        if !client.buffer.isEmpty {
            Self.writeAll(backend, client.buffer)
            client.buffer.removeAll(keepingCapacity: true)
        }
    }

    private func release(_ backend: Int32) {
        let state = backends[Int(backend)]!
        if state.client >= 0 { clients[Int(state.client)]?.backend = -1 }
        state.client = -1
        while waitersHead < waiters.count {
            let fd = waiters[waitersHead]
            waitersHead += 1
            if let client = clients[Int(fd)], client.waiting {
                client.waiting = false
                assign(backend, to: fd, client)
                return
            }
        }
        waiters.removeAll(keepingCapacity: true)
        waitersHead = 0
        idle.append(backend)
    }

    private func closeClient(_ fd: Int32) {
        if let client = clients[Int(fd)], client.backend >= 0 { release(client.backend) }
        clients[Int(fd)] = nil
        epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
        close(fd)
    }

    // MARK: Sockets

    private static func listen(port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, 4)
        var address = loopback(port: port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        precondition(bound == 0 && Glibc.listen(fd, 4096) == 0, "cannot listen on 127.0.0.1:\(port)")
        return fd
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written > 0 { offset += written } else if written < 0, errno == EAGAIN || errno == EINTR { continue } else { return }
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) { bytes.withUnsafeBytes { writeAll(fd, $0) } }

    /// Connects and logs in with md5 (blocking), then makes the socket non-blocking. Returns it
    /// and the ParameterStatus messages PostgreSQL sent.
    private static func connectBackend(_ settings: BackendSettings) -> (Int32, [UInt8]) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = loopback(port: settings.port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        precondition(connected == 0, "cannot connect to PostgreSQL on 127.0.0.1:\(settings.port)")
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
        writeAll(fd, Wire.startup(user: settings.user, database: settings.database))
        var buffer: [UInt8] = []
        var parameterStatus: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while true {
            while buffer.count >= 5, buffer.count >= Wire.int32(buffer, at: 1) + 1 {
                let message = Array(buffer[0...Wire.int32(buffer, at: 1)])
                buffer.removeFirst(message.count)
                switch message[0] {
                case 0x52 where Wire.int32(message, at: 5) == 5:
                    let stored = Wire.storedHash(user: settings.user, password: settings.password)
                    writeAll(fd, Wire.message(0x70, Wire.md5Response(storedHash: stored, salt: Array(message[9..<13])) + [0]))
                case 0x52 where Wire.int32(message, at: 5) != 0:
                    fatalError("PostgreSQL asked for an authentication other than md5")
                case 0x53:
                    parameterStatus += message
                case 0x45:
                    fatalError("PostgreSQL refused the login: \(String(decoding: message.dropFirst(5), as: UTF8.self))")
                case 0x5A:
                    _ = fcntl(fd, F_SETFL, O_NONBLOCK)
                    return (fd, parameterStatus)
                default:
                    break
                }
            }
            let count = read(fd, &chunk, chunk.count)
            precondition(count > 0, "PostgreSQL closed the connection during login")
            buffer += chunk[0..<count]
        }
    }
}
