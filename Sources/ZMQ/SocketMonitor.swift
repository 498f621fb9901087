import CLibZMQ
import Synchronization

/// Connection events of one socket (`zmq_socket_monitor`), read from a PAIR socket. A client uses
/// them to tell "the broker refused my key" from "the broker is away".
public final class SocketMonitor {
    public let socket: ZMQSocket
    private static let counter = Atomic<Int>(0)

    public enum Event: Sendable, Equatable {
        case connected, disconnected
        case handshakeSucceeded
        /// The server's authenticator (ZAP) refused this peer's credentials.
        case authenticationFailed(status: Int)
        /// The handshake failed otherwise (wrong server key, mechanism mismatch...).
        case handshakeFailed(code: Int)
        case other(Int)
    }

    /// Monitors `target` for the events compass cares about.
    public init(_ target: ZMQSocket, context: ZMQContext) throws {
        let endpoint = "inproc://compass-monitor-\(SocketMonitor.counter.add(1, ordering: .relaxed).newValue)"
        let events = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED
            | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
        _ = try retryingEINTR("zmq_socket_monitor", endpoint) { zmq_socket_monitor(target.handle, endpoint, events) }
        socket = try context.socket(.pair)
        try socket.connect(endpoint)
    }

    /// The events waiting, oldest first.
    public func events() throws -> [Event] {
        var out: [Event] = []
        while let frames = try socket.receive(dontWait: true) {
            guard let first = frames.first, first.count >= 6 else { continue }
            let (event, value) = first.withUnsafeBytes { b -> (Int32, UInt32) in
                (Int32(b.loadUnaligned(fromByteOffset: 0, as: UInt16.self)), b.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
            }
            switch event {
            case ZMQ_EVENT_CONNECTED: out.append(.connected)
            case ZMQ_EVENT_DISCONNECTED: out.append(.disconnected)
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: out.append(.handshakeSucceeded)
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: out.append(.authenticationFailed(status: Int(value)))
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL: out.append(.handshakeFailed(code: Int(value)))
            default: out.append(.other(Int(event)))
            }
        }
        return out
    }
}
