import CCompassShims

#if canImport(Glibc)
import Glibc
#endif

/// A close-on-exec pipe. Hand one end to a child with `FileAction.inherit`, then close it here.
public struct PipePair: Sendable {
    public let readEnd: Int32
    public let writeEnd: Int32

    public init() throws {
        var fds: [Int32] = [0, 0]
        try systemCall("pipe2") { compass_pipe_cloexec(&fds, 0) }
        readEnd = fds[0]
        writeEnd = fds[1]
    }
}

/// Sets or clears O_NONBLOCK on `fd`.
public func setNonBlocking(_ fd: Int32, _ on: Bool = true) throws {
    guard let flags = try systemCall("fcntl", "F_GETFL", body: { fcntl(fd, F_GETFL) }) else { return }
    try systemCall("fcntl", "F_SETFL") { fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) }
}

/// Writes all of `bytes` to a blocking fd, retrying short writes and EINTR.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
    var offset = 0
    while offset < bytes.count {
        guard let n = try systemCall("write", body: { write(fd, bytes.baseAddress! + offset, bytes.count - offset) }) else {
            // Non-blocking fd full: wait until writable.
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = Glibc.poll(&p, 1, 1000)
            continue
        }
        offset += n
    }
}

/// Closes `fd`, ignoring errors (used on cleanup paths).
public func closeQuietly(_ fd: Int32) {
    if fd >= 0 { close(fd) }
}
