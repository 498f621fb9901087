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
