import CLibZMQ

/// A libzmq context. Owns the I/O threads; sockets keep it alive.
///
/// libzmq documents contexts as thread-safe, which is why this class is `Sendable`; sockets are not
/// and are created by, and stay on, the thread that uses them.
public final class ZMQContext: @unchecked Sendable {
    // @unchecked: the only state is libzmq's context handle, which libzmq makes thread-safe.
    let handle: UnsafeMutableRawPointer

    /// Creates a context with `ioThreads` background I/O threads.
    public init(ioThreads: Int32 = 1) throws {
        guard let handle = zmq_ctx_new() else { throw ZMQError.last("zmq_ctx_new") }
        self.handle = handle
        if zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads) != 0 {
            let error = ZMQError.last("zmq_ctx_set", "ZMQ_IO_THREADS")
            zmq_ctx_term(handle)
            throw error
        }
        // Bound the number of sockets generously: a broker fronting many workers needs more than the
        // default 1023 only through its two ROUTER sockets, but tests and tools open many.
        _ = zmq_ctx_set(handle, ZMQ_MAX_SOCKETS, 4096)
    }

    deinit {
        // Every socket holds a strong reference to the context, so all are closed by now and
        // zmq_ctx_term returns at once (sockets are closed with a finite LINGER).
        while zmq_ctx_term(handle) == -1 && zmq_errno() == EINTR {}
    }

    /// Creates a socket of `type`. The socket is closed when the returned object is released.
    public func socket(_ type: SocketType) throws -> ZMQSocket {
        try ZMQSocket(context: self, type: type)
    }

    /// Whether libzmq was built with a capability such as `"curve"` or `"ipc"`.
    public static func has(_ capability: String) -> Bool {
        zmq_has(capability) == 1
    }

    /// The libzmq version, e.g. `"4.3.4"`.
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }
}

/// The socket types compass uses.
public enum SocketType: Sendable {
    case router, dealer, pair, req, rep, push, pull

    var raw: Int32 {
        switch self {
        case .router: ZMQ_ROUTER
        case .dealer: ZMQ_DEALER
        case .pair: ZMQ_PAIR
        case .req: ZMQ_REQ
        case .rep: ZMQ_REP
        case .push: ZMQ_PUSH
        case .pull: ZMQ_PULL
        }
    }
}
