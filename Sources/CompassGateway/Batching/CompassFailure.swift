/// Why a request did not get a result from the broker: a compass code (docs/protocol.md) or one of
/// the gateway's own, and the broker's hint for when to retry.
public struct CompassFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: String
    public var message: String
    public var retryAfterMilliseconds: UInt32?

    public init(code: String, message: String, retryAfterMilliseconds: UInt32? = nil) {
        self.code = code
        self.message = message
        self.retryAfterMilliseconds = retryAfterMilliseconds
    }

    public var description: String { "\(code): \(message)" }

    /// The gateway's `--deadline-ms` passed before the result came.
    public static let deadlineCode = "deadline_exceeded"
    /// The broker has not answered STATUS for a while.
    public static let unavailableCode = "broker_unavailable"
    /// The pool exists but no worker serves it.
    public static let noWorkersCode = "no_workers"
    /// The engine cannot do what the request asks (an engine's per-request error code, and the
    /// gateway's when an engine left out the logprobs a request asked for).
    public static let unsupportedCode = "unsupported"
}
