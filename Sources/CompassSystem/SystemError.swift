#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: its name, errno, and the C library's text for it.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    public let code: Int32
    public let call: String
    public let detail: String

    public init(code: Int32, call: String, detail: String = "") {
        self.code = code
        self.call = call
        self.detail = detail
    }

    public var description: String {
        let text = String(cString: strerror(code))
        return detail.isEmpty ? "\(call): \(text) (errno \(code))" : "\(call) \(detail): \(text) (errno \(code))"
    }
}

/// Runs a system call that returns -1 and sets errno on failure, retrying on EINTR.
/// EAGAIN is returned as `nil` so callers can treat it as "would block".
@discardableResult
public func systemCall<T: BinaryInteger>(_ call: String, _ detail: String = "", body: () -> T) throws -> T? {
    while true {
        let rc = body()
        if rc != -1 { return rc }
        let code = errno
        if code == EINTR { continue }
        if code == EAGAIN || code == EWOULDBLOCK { return nil }
        throw SystemError(code: code, call: call, detail: detail)
    }
}
