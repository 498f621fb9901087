import CompassProtocol

/// The synthetic engine's deterministic "model": the completion of a prompt is its words in
/// reverse order, cut at `max_tokens` words (default 16) or before the first stop string.
/// A word is a token. Anyone can compute the expected text from the prompt, which is what the
/// end-to-end tests do to prove every result reached the request it belongs to.
public enum SyntheticModel {
    public static let defaultMaxTokens = 16

    /// The result for one request.
    public static func complete(_ request: InferenceRequest) -> InferenceResult {
        let words = request.flattenedPrompt.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        let limit = max(0, request.maxTokens ?? defaultMaxTokens)
        let reversed = words.reversed().map(String.init)
        var output = Array(reversed.prefix(limit))
        var finish = reversed.count > limit ? "length" : "stop"
        var text = output.joined(separator: " ")
        for stop in request.stop ?? [] where !stop.isEmpty {
            if let range = text.range(of: stop) {
                text = String(text[..<range.lowerBound])
                output = text.split(separator: " ").map(String.init)
                finish = "stop"
            }
        }
        return InferenceResult(customID: request.customID, text: text, promptTokens: words.count,
                               completionTokens: output.count, finishReason: finish)
    }

    /// Simulated GPU time for a batch, in microseconds: a fixed per-batch cost, prefill per prompt
    /// token of every request, and decode per step of the longest completion (requests decode together).
    public static func latencyMicroseconds(_ requests: [InferenceRequest], results: [InferenceResult], profile: LatencyProfile) -> UInt64 {
        let promptTokens = results.reduce(0) { $0 + $1.promptTokens }
        let steps = results.map(\.completionTokens).max() ?? 0
        return profile.batchMicroseconds + UInt64(promptTokens) * profile.prefillMicrosecondsPerToken
            + UInt64(steps) * profile.decodeMicrosecondsPerStep
    }
}

/// How long the synthetic engine pretends to compute.
public struct LatencyProfile: Sendable, Equatable {
    public var batchMicroseconds: UInt64 = 0
    public var prefillMicrosecondsPerToken: UInt64 = 0
    public var decodeMicrosecondsPerStep: UInt64 = 0

    public init(batchMicroseconds: UInt64 = 0, prefillMicrosecondsPerToken: UInt64 = 0, decodeMicrosecondsPerStep: UInt64 = 0) {
        self.batchMicroseconds = batchMicroseconds
        self.prefillMicrosecondsPerToken = prefillMicrosecondsPerToken
        self.decodeMicrosecondsPerStep = decodeMicrosecondsPerStep
    }

    public var isZero: Bool { batchMicroseconds == 0 && prefillMicrosecondsPerToken == 0 && decodeMicrosecondsPerStep == 0 }
}
