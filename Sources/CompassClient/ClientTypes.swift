import CompassProtocol
import CompassSecurity
import Foundation

/// Settings of a `CompassClient`.
public struct ClientOptions: Sendable {
    /// The broker's frontend endpoint, e.g. `tcp://127.0.0.1:5555`.
    public var broker: String
    /// The producer session: results not yet acknowledged are re-sent to whoever says HELLO with it.
    public var session: String
    public var heartbeatMilliseconds: UInt64 = UInt64(WireProtocol.defaultHeartbeatMilliseconds)
    public var liveness: UInt64 = UInt64(WireProtocol.defaultLiveness)
    /// Longest wait between retries of a SUBMIT the broker answered `busy`.
    public var maxBusyBackoffMilliseconds: UInt64 = 5_000
    /// Called on the client's thread for each PROGRESS (batch id, done, total); keep it short.
    public var onProgress: (@Sendable (String, UInt32, UInt32) -> Void)?
    /// Called on the client's thread when the broker answers `busy` (batch id, retry after ms).
    public var onBusy: (@Sendable (String, UInt32) -> Void)?
    /// Acknowledge outcomes only when `ack(batchID:)` is called (after the caller has stored them),
    /// instead of on receipt. The broker keeps an outcome until it is acknowledged.
    public var manualAck = false
    /// CURVE: the broker's public key and this producer's key pair (nil: plaintext).
    public var curve: CurveClientKeys?
    /// Retry a SUBMIT the broker answers `busy` (with backoff) until it is accepted. When false,
    /// the submit throws `ClientError.busy` at once (a gateway answers 429 and lets its caller back off).
    public var retryBusy = true
    /// How long a SUBMIT answered `unknown_pool` with a retry hint (the name is valid, but no worker
    /// of the pool has registered yet: one may be starting, or the broker restarted) is re-sent
    /// before it fails. 0: it fails at once.
    public var unknownPoolWaitMilliseconds: UInt64 = 0
    /// Called on the client's thread when a batch starts waiting for its pool (pool, the broker's
    /// message), once per pool until a batch of it is accepted or no batch waits for it any more.
    public var onWaitingForPool: (@Sendable (String, String) -> Void)?

    public init(broker: String, session: String = "s-" + UUID().uuidString.lowercased()) {
        self.broker = broker
        self.session = session
    }
}

/// How a batch ended.
public struct BatchOutcome: Sendable {
    public enum Status: Sendable {
        /// RESULT: the engine's per-request results (JSON array) and the worker's stats (JSON).
        case completed(payload: [UInt8], stats: [UInt8])
        /// FAILED: the batch failed as a whole (`partial` may hold results of some requests).
        case failed(code: String, message: String, partial: [UInt8])
    }

    public let batchID: String
    /// Dispatches the broker made (1 unless a worker was lost or failed).
    public let attempts: UInt32
    public let status: Status

    /// The decoded per-request results of a completed batch.
    public func results() throws -> [InferenceResult] {
        guard case .completed(let payload, _) = status else { return [] }
        return try JSONDecoder().decode([InferenceResult].self, from: Data(payload))
    }

    /// The worker's figures for a completed batch.
    public func stats() -> ResultStats? {
        guard case .completed(_, let stats) = status else { return nil }
        return try? JSONDecoder().decode(ResultStats.self, from: Data(stats))
    }
}

/// Why a submit or query did not get an outcome.
public enum ClientError: Error, Sendable, CustomStringConvertible, Equatable {
    /// The broker refused the message (bad input, unknown pool, too large, duplicate...).
    case rejected(code: String, message: String)
    /// The client was closed before an answer came.
    case closed
    /// No answer within the caller's deadline.
    case timedOut(String)
    /// The broker refused this client's CURVE credentials, or the handshake failed.
    case unauthorized(String)
    /// The pool is full (only with `retryBusy` off): try again after the broker's hint.
    case busy(message: String, retryAfterMilliseconds: UInt32)

    public var description: String {
        switch self {
        case .rejected(let code, let message): "broker rejected the request (\(code)): \(message)"
        case .closed: "the client was closed"
        case .timedOut(let what): "timed out waiting for \(what)"
        case .unauthorized(let why): why
        case .busy(let message, let retry): "\(message) (retry after \(retry) ms)"
        }
    }
}
