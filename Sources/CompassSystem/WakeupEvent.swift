import CCompassShims

#if canImport(Glibc)
import Glibc
#endif

/// An eventfd that one thread signals and another polls: how work handed to a socket-owning thread
/// wakes it from `zmq_poll` without sharing the socket.
public final class WakeupEvent: @unchecked Sendable {
    // @unchecked: the fd is fixed at init; eventfd reads and writes are thread-safe system calls.
    public let fd: Int32

    public init() throws {
        guard let fd = try systemCall("eventfd", body: { compass_eventfd() }) else {
            throw SystemError(code: EAGAIN, call: "eventfd")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Wakes the polling thread. Safe from any thread.
    public func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Clears pending wake-ups; call after the poll reports the fd readable.
    public func clear() {
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
    }
}
