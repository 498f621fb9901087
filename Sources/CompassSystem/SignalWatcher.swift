import CCompassShims
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The write end of the self-pipe, read by the C signal handler (an atomic load is async-signal-safe).
private let signalPipeWriteEnd = Atomic<Int32>(-1)

/// Turns signals into bytes on a pipe, so a poll loop sees SIGTERM or SIGCHLD as a readable fd.
///
/// Only one watcher exists per process (signal dispositions are process-wide).
public final class SignalWatcher: Sendable {
    /// Poll this for readability; then call `drain()`.
    public let fd: Int32
    private let writeEnd: Int32

    /// Installs handlers for `signals` and ignores SIGPIPE (a dead peer must not kill the process).
    public init(_ signals: [Int32]) throws {
        var fds: [Int32] = [0, 0]
        try systemCall("pipe2") { compass_pipe_cloexec(&fds, 1) }
        fd = fds[0]
        writeEnd = fds[1]
        signalPipeWriteEnd.store(writeEnd, ordering: .sequentiallyConsistent)
        signal(SIGPIPE, SIG_IGN)
        for sig in signals {
            signal(sig) { number in
                let saved = errno
                var byte = UInt8(truncatingIfNeeded: number)
                _ = write(signalPipeWriteEnd.load(ordering: .relaxed), &byte, 1)
                errno = saved
            }
        }
    }

    deinit {
        signalPipeWriteEnd.store(-1, ordering: .sequentiallyConsistent)
        close(fd)
        close(writeEnd)
    }

    /// The signals received since the last call, oldest first.
    public func drain() -> [Int32] {
        var result: [Int32] = []
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            result.append(contentsOf: buffer[0..<n].map { Int32($0) })
        }
        return result
    }
}
