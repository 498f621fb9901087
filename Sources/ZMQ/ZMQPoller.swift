import CLibZMQ

#if canImport(Glibc)
import Glibc
#endif

/// Waits for any of several sockets or file descriptors to become readable (`zmq_poll`).
///
/// Owned by the thread that owns its sockets. Items are added once; `poll` is then called in a loop.
public final class ZMQPoller {
    private var items: [zmq_pollitem_t] = []
    private var sockets: [ZMQSocket?] = [] // keeps polled sockets alive

    public init() {}

    /// Adds a socket; returns its index for `isReadable`.
    @discardableResult
    public func add(_ socket: ZMQSocket) -> Int {
        items.append(zmq_pollitem_t(socket: socket.handle, fd: -1, events: Int16(ZMQ_POLLIN), revents: 0))
        sockets.append(socket)
        return items.count - 1
    }

    /// Adds a plain file descriptor (a pipe, an eventfd); returns its index for `isReadable`.
    @discardableResult
    public func add(fd: Int32) -> Int {
        items.append(zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0))
        sockets.append(nil)
        return items.count - 1
    }

    /// Replaces the socket at `index` (after a reconnect made a new one).
    public func replace(_ index: Int, with socket: ZMQSocket) {
        items[index].socket = socket.handle
        sockets[index] = socket
    }

    /// Waits up to `timeoutMilliseconds` (-1 forever) for readability.
    /// Returns the number of ready items; 0 on timeout or when a signal interrupted the wait.
    @discardableResult
    public func poll(timeoutMilliseconds: Int) throws -> Int {
        let rc = items.withUnsafeMutableBufferPointer { buffer in
            zmq_poll(buffer.baseAddress, Int32(buffer.count), timeoutMilliseconds)
        }
        if rc == -1 {
            let code = zmq_errno()
            if code == EINTR {
                for i in items.indices { items[i].revents = 0 }
                return 0
            }
            throw ZMQError(code: code, call: "zmq_poll")
        }
        return Int(rc)
    }

    /// Whether the item at `index` was readable after the last `poll`.
    public func isReadable(_ index: Int) -> Bool {
        items[index].revents & Int16(ZMQ_POLLIN) != 0
    }
}
