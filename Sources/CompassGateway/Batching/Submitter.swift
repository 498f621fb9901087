import CompassProtocol

/// Sends batches through `once`; a batch refused as `too_large` is cut in halves and sent again,
/// down to single requests, so gathering requests never makes one fail that would pass alone.
public struct Submitter: Sendable {
    public let once: SubmitBatch

    public init(_ once: @escaping SubmitBatch) { self.once = once }

    /// Each request's result, by custom_id.
    public func submit(pool: String, requests: [InferenceRequest], deadlineMilliseconds: UInt32 = 0) async -> [String: Result<InferenceResult, CompassFailure>] {
        guard !requests.isEmpty else { return [:] }
        let answer = await once(pool, requests, deadlineMilliseconds)
        if let failure = answer.failure, failure.code == RejectCode.tooLarge.rawValue, requests.count > 1, answer.results.isEmpty {
            let middle = requests.count / 2
            async let first = submit(pool: pool, requests: Array(requests[..<middle]), deadlineMilliseconds: deadlineMilliseconds)
            async let second = submit(pool: pool, requests: Array(requests[middle...]), deadlineMilliseconds: deadlineMilliseconds)
            return (await first).merging(await second) { a, _ in a }
        }
        var out: [String: Result<InferenceResult, CompassFailure>] = [:]
        for request in requests {
            let id = request.customID
            if let result = answer.results[id] {
                if let error = result.error {
                    out[id] = .failure(CompassFailure(code: error.code, message: error.message))
                } else {
                    out[id] = .success(result)
                }
            } else {
                out[id] = .failure(answer.failure ?? CompassFailure(code: FailureCode.engineError.rawValue,
                                                                    message: "the engine returned no result for this request"))
            }
        }
        return out
    }
}
