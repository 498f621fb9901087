/// The broker's checks of the payloads it is given, as pure functions: what a SUBMIT carries and
/// what a worker's RESULT carries (docs/protocol.md, Payloads and Worker rules). The broker runs
/// them unless started with `--no-validate-payloads`.
public enum PayloadCheck {
    /// A SUBMIT payload: a non-empty JSON array (UTF-8, no lone surrogate, nesting at most
    /// `WireProtocol.maxJSONDepth`) whose element count agrees with the meta's `request_count`
    /// (0 there means "not given": the broker counts). Returns the request count, or the refusal.
    public static func submit(_ payload: UnsafeRawBufferPointer, declaredCount: UInt32) -> Result<UInt32, ProtocolError> {
        switch JSONSyntax.check(payload, maxDepth: WireProtocol.maxJSONDepth) {
        case .array(let count):
            guard count > 0 else { return .failure(ProtocolError(.badPayload, "the payload is an empty JSON array")) }
            guard declaredCount == 0 || Int(declaredCount) == count else {
                return .failure(ProtocolError(.badPayload,
                    "the meta's request_count is \(declaredCount) but the payload holds \(count) requests (send the count, or 0 to let the broker count)"))
            }
            return .success(UInt32(clamping: count))
        case .other:
            return .failure(ProtocolError(.badPayload, "the payload must be a JSON array of requests"))
        case .invalid(let offset, let reason):
            return .failure(ProtocolError(.badPayload, "the payload is not valid JSON: \(reason) at byte \(offset)"))
        }
    }

    /// A worker's RESULT: its stats frame and payload as read.
    public static func result(stats: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer) -> ResultCheck {
        ResultCheck(payload: JSONSyntax.check(payload, maxDepth: WireProtocol.maxJSONDepth),
                    stats: JSONSyntax.check(stats, maxDepth: WireProtocol.maxJSONDepth))
    }
}

/// What the broker found in a worker's RESULT; the scheduler decides with it (`problem`).
public struct ResultCheck: Sendable, Equatable {
    public var payload: JSONSyntax.Outcome
    public var stats: JSONSyntax.Outcome

    public init(payload: JSONSyntax.Outcome, stats: JSONSyntax.Outcome) {
        self.payload = payload
        self.stats = stats
    }

    /// Why the result cannot go to the producer of a batch of `requestCount` requests (0: count
    /// unknown, not compared), or nil when it can: the payload must be a JSON array with one result
    /// per request, the stats a JSON object (any JSON value is taken).
    public func problem(expecting requestCount: UInt32) -> String? {
        switch payload {
        case .invalid(let offset, let reason): return "the payload is not valid UTF-8 JSON: \(reason) at byte \(offset)"
        case .other: return "the payload is not a JSON array of results"
        case .array(let count):
            if requestCount > 0 && count != Int(requestCount) {
                return "the payload holds \(count) results for a batch of \(requestCount) requests"
            }
        }
        if case .invalid(let offset, let reason) = stats { return "the stats are not valid UTF-8 JSON: \(reason) at byte \(offset)" }
        return nil
    }
}
