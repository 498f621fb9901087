/// What the broker's scheduler may know of a payload's format, and no more. It reads payloads
/// only to isolate a poison request: a batch that keeps killing engines is cut in halves, the
/// requests of a half that still fails are failed one by one, and the halves' answers are joined
/// back into the one answer the producer gets. The scheduler is given a format
/// (`JSONPayloadFormat` in the broker) and never parses a payload itself.
public protocol PayloadFormat: Sendable {
    /// The first and second half of a batch's requests, or nil when they cannot be cut (fewer than 2).
    func halves(_ requests: [UInt8]) -> (first: [UInt8], second: [UInt8])?
    /// One result payload holding the results of `results`, in order.
    func concatenate(_ results: [[UInt8]]) -> [UInt8]
    /// A result payload that fails every request of `requests` with `code` and `message`.
    func failedResults(_ requests: [UInt8], code: AnyFailureCode, message: String) -> [UInt8]
    /// The stats of a batch answered in `parts` halves, from the stats of the halves that
    /// succeeded (a half that failed has none).
    func mergeStats(_ stats: [[UInt8]], parts: Int) -> [UInt8]
}
