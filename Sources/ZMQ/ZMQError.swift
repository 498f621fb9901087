import CLibZMQ

#if canImport(Glibc)
import Glibc
#endif

/// An error from a libzmq call: the failing call's name, its errno, and libzmq's text for it.
public struct ZMQError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The errno value libzmq reported.
    public let code: Int32
    /// The libzmq function that failed, e.g. `zmq_bind`.
    public let call: String
    /// Extra context such as the endpoint, or empty.
    public let detail: String

    public init(code: Int32, call: String, detail: String = "") {
        self.code = code
        self.call = call
        self.detail = detail
    }

    /// The error for the calling thread's current `zmq_errno()`.
    static func last(_ call: String, _ detail: String = "") -> ZMQError {
        ZMQError(code: zmq_errno(), call: call, detail: detail)
    }

    public var description: String {
        let text = String(cString: zmq_strerror(code))
        return detail.isEmpty ? "\(call): \(text) (errno \(code))" : "\(call) \(detail): \(text) (errno \(code))"
    }

    /// The socket cannot send or receive now without blocking.
    public var isWouldBlock: Bool { code == EAGAIN }
    /// The peer named by a ROUTER routing id is not connected (with ROUTER_MANDATORY).
    public var isHostUnreachable: Bool { code == EHOSTUNREACH }
    /// The context was terminated while the call was in progress.
    public var isTerminated: Bool { code == ETERM }
}

/// Runs a libzmq call that returns -1 on failure, retrying when a signal interrupted it.
/// Returns the call's result, or throws a `ZMQError` naming the call.
@inline(__always)
func retryingEINTR(_ call: String, _ detail: String = "", _ body: () -> Int32) throws -> Int32 {
    while true {
        let rc = body()
        if rc != -1 { return rc }
        let code = zmq_errno()
        if code == EINTR { continue }
        throw ZMQError(code: code, call: call, detail: detail)
    }
}
