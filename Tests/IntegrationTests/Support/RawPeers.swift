import CompassProtocol
import CompassWire
import Foundation
import ZMQ

/// Raw sockets for tests that must misbehave (never read, send garbage) where the client library would not.
final class ZMQContextHolder {
    let context: ZMQContext
    init() throws { context = try ZMQContext() }

    func dealer(_ endpoint: String, id: String? = nil) throws -> RawDealer {
        let s = try context.socket(.dealer)
        try s.set([.linger(milliseconds: 0), .sendHighWaterMark(100_000), .receiveHighWaterMark(10)])
        if let id { try s.set(.routingID(Array(id.utf8))) }
        try s.connect(endpoint)
        return RawDealer(socket: s)
    }
}

final class RawDealer {
    let socket: ZMQSocket
    init(socket: ZMQSocket) { self.socket = socket }

    func submit(_ id: String, _ payload: String, pool: String = "default") throws {
        try socket.send(ProducerRequest.submit(batchID: id, pool: pool, meta: BatchMeta(requestCount: 1), payload: Frame(string: payload)).encode())
    }

    func send(_ frames: [Frame]) throws { try socket.send(frames, dontWait: true) }
}

/// A producer speaking the wire protocol by hand (no HELLO unless told, no retries), with a
/// deadline on every wait: for tests of what the broker does with peers the client would not be.
final class RawProducer {
    let socket: ZMQSocket
    let monitor: SocketMonitor

    init(_ context: ZMQContext, _ endpoint: String, id: String? = nil) throws {
        socket = try context.socket(.dealer)
        try socket.set([.linger(milliseconds: 0), .receiveTimeout(milliseconds: 100), .reconnectInterval(milliseconds: 50)])
        if let id { try socket.set(.routingID(Array(id.utf8))) }
        monitor = try SocketMonitor(socket, context: context)
        try socket.connect(endpoint)
    }

    func send(_ request: ProducerRequest) throws { try socket.send(request.encode()) }

    func submit(_ id: String, _ payload: String, pool: String = "default", maxAttempts: UInt16 = 0) throws {
        try send(.submit(batchID: id, pool: pool, meta: BatchMeta(requestCount: 1, maxAttempts: maxAttempts), payload: Frame(string: payload)))
    }

    /// Every reply until one for which `last` holds (included), or throws at the deadline.
    func receive(until last: (ProducerReply) -> Bool, timeout: Double = 20) throws -> [ProducerReply] {
        let deadline = Date().addingTimeInterval(timeout)
        var replies: [ProducerReply] = []
        while Date() < deadline {
            guard let frames = try receiveOrTimeout(socket) else { continue }
            let reply = try ProducerReply.decode(frames[...])
            replies.append(reply)
            if last(reply) { return replies }
        }
        throw HarnessError("no awaited reply within \(timeout) s; got \(replies)")
    }

    /// Sends HEARTBEAT and returns every reply up to its answer: what the broker said to the
    /// messages sent before it (it answers one connection's messages in order).
    func sync(timeout: Double = 20) throws -> [ProducerReply] {
        try send(.heartbeat)
        return try receive(until: { if case .heartbeat = $0 { true } else { false } }, timeout: timeout)
    }

    /// Waits for the socket's connection to drop (the broker went away).
    func waitForDisconnect(timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        let poller = ZMQPoller()
        let index = poller.add(monitor.socket)
        while Date() < deadline {
            _ = try poller.poll(timeoutMilliseconds: 100)
            if poller.isReadable(index), try monitor.events().contains(.disconnected) { return }
        }
        throw HarnessError("the connection did not drop within \(timeout) s")
    }
}

extension ProducerReply {
    var isWelcome: Bool { if case .welcome = self { true } else { false } }
    var isResult: Bool { if case .result = self { true } else { false } }
    var isOutcome: Bool { switch self { case .result, .failed: true; default: false } }
    var isAccepted: Bool { if case .accepted = self { true } else { false } }
    var rejectionCode: String? { if case .rejected(_, let code, _, _) = self { code } else { nil } }
    var outcomeID: String? {
        switch self {
        case .result(let id, _, _, _), .failed(let id, _, _, _, _): id
        default: nil
        }
    }
}

/// A worker speaking the wire protocol by hand.
final class RawWorker {
    let socket: ZMQSocket

    init(_ context: ZMQContext, _ endpoint: String, pool: String = "default", credit: Int = 1, maxBatch: Int = 64) throws {
        socket = try context.socket(.dealer)
        try socket.set([.linger(milliseconds: 0), .receiveTimeout(milliseconds: 50)])
        try socket.connect(endpoint)
        let caps = WorkerCapabilities(pool: pool, tp: 1, gpus: [], model: "raw", engine: "raw", maxBatch: maxBatch, credit: credit,
                                      pid: getpid(), host: "test", version: "0")
        try send(.ready(capabilities: Frame(bytes: try JSONEncoder().encode(caps))))
    }

    func send(_ message: WorkerMessage) throws { try socket.send(message.encode()) }

    /// The next message from the broker within 50 ms, or nil.
    func next() throws -> BrokerWorkerMessage? {
        guard let frames = try receiveOrTimeout(socket) else { return nil }
        return try BrokerWorkerMessage.decode(frames[...])
    }
}

/// One message, or nil when the socket's receive timeout passes first.
func receiveOrTimeout(_ socket: ZMQSocket) throws -> [Frame]? {
    do {
        return try socket.receive()
    } catch let error as ZMQError where error.isWouldBlock {
        return nil
    }
}
