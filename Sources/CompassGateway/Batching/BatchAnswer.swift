import CompassProtocol

/// What one compass batch came back with: the results it has (by custom_id) and, when the batch
/// failed as a whole, why (a FAILED batch may still carry some results).
public struct BatchAnswer: Sendable {
    public var results: [String: InferenceResult]
    public var failure: CompassFailure?

    public init(results: [String: InferenceResult] = [:], failure: CompassFailure? = nil) {
        self.results = results
        self.failure = failure
    }
}

/// Submits one batch to a pool and waits for its answer (never throws: failures are answers).
public typealias SubmitBatch = @Sendable (_ pool: String, _ requests: [InferenceRequest], _ deadlineMilliseconds: UInt32) async -> BatchAnswer
