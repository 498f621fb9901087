import CompassProtocol

/// The synthetic engine's deterministic "model": the completion of a prompt is its words in
/// reverse order, cut at `max_tokens` words (default 16) or before the first stop string.
/// A word is a token (a token id `n` is the word `t<n>`). Anyone can compute the expected text
/// from the prompt, which is what the end-to-end tests do to prove every result reached the
/// request it belongs to. Logprobs are as simple: the token the model predicts (the next word of
/// the completion) has logprob -0.125, any other token minus its length in bytes; a prompt's
/// tokens are predicted by nothing, so each scores minus its length. Tests compute scores exactly.
public enum SyntheticModel {
    public static let defaultMaxTokens = 16

    /// The logprob the model gives the token it predicts, and any other token: minus its length.
    public static let predictedLogprob = -0.125

    /// The result for one request: a completion, a scoring request's scores, and the logprobs it asked for.
    public static func complete(_ request: InferenceRequest) -> InferenceResult {
        let words = tokens(of: request)
        if let continuations = request.continuations { return score(request, context: words, continuations: continuations) }
        let limit = max(0, request.maxTokens ?? defaultMaxTokens)
        let reversed = Array(words.reversed())
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
        var result = InferenceResult(customID: request.customID, text: text, promptTokens: words.count,
                                     completionTokens: output.count, finishReason: finish)
        if let k = request.logprobs {
            result.logprobs = logprobs(output, predicted: output, alternatives: k, firstHasNone: false)
        }
        if let k = request.promptLogprobs {
            result.promptLogprobs = logprobs(words, predicted: [], alternatives: k, firstHasNone: true)
        }
        return result
    }

    /// A prompt's tokens: its words, or `t<id>` for each token id.
    public static func tokens(of request: InferenceRequest) -> [String] {
        if let ids = request.promptTokenIDs { return ids.map { "t\($0)" } }
        return words(request.flattenedPrompt)
    }

    static func words(_ text: String) -> [String] {
        text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init)
    }

    /// A token's id: FNV-1a of its bytes, so the same word always has the same id.
    public static func tokenID(_ token: String) -> Int {
        if token.hasPrefix("t"), let id = Int(token.dropFirst()) { return id }
        var hash: UInt32 = 2_166_136_261
        for byte in token.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int(hash % 50_000)
    }

    /// The logprob of `token` where the model predicts `predicted`.
    public static func logprob(_ token: String, predicted: String?) -> Double {
        token == predicted ? predictedLogprob : -Double(token.utf8.count)
    }

    /// Scores each continuation after `context`: the model predicts the context's words in
    /// reverse order (its completion), so a continuation is greedy when it is that completion's
    /// start, and each of its words scores `logprob(word, predicted:)`.
    static func score(_ request: InferenceRequest, context: [String], continuations: [InferenceRequest.Continuation]) -> InferenceResult {
        let predicted = Array(context.reversed())
        let scores = continuations.map { continuation -> ContinuationScore in
            let words: [String] = switch continuation {
            case .text(let text): words(text)
            case .tokens(let ids): ids.map { "t\($0)" }
            }
            var sum = 0.0
            var greedy = true
            for (i, word) in words.enumerated() {
                let guess = i < predicted.count ? predicted[i] : nil
                sum += logprob(word, predicted: guess)
                greedy = greedy && word == guess
            }
            return ContinuationScore(logprob: sum, tokens: words.count, greedy: greedy)
        }
        return InferenceResult(customID: request.customID, text: "", promptTokens: context.count, completionTokens: 0,
                               finishReason: "score", scores: scores)
    }

    /// Logprobs of `tokens`, each predicted as `predicted[i]`; `alternatives` entries per position:
    /// the predicted token (or the token itself) first, then `<alt1>`, `<alt2>`, ... each one less likely.
    static func logprobs(_ tokens: [String], predicted: [String?], alternatives k: Int, firstHasNone: Bool) -> TokenLogprobs {
        var values: [Double?] = []
        var tops: [[TopLogprob]?] = []
        for (i, token) in tokens.enumerated() {
            if firstHasNone && i == 0 {
                values.append(nil)
                tops.append(nil)
                continue
            }
            let guess = i < predicted.count ? predicted[i] : nil
            values.append(logprob(token, predicted: guess))
            let best = guess ?? token
            var top: [TopLogprob] = []
            for j in 0..<k {
                let name = j == 0 ? best : "<alt\(j)>"
                let value = j == 0 ? logprob(best, predicted: guess) : logprob(best, predicted: guess) - Double(j)
                top.append(TopLogprob(tokenID: tokenID(name), token: name, logprob: value))
            }
            tops.append(top)
        }
        return TokenLogprobs(tokenIDs: tokens.map(tokenID), tokens: tokens, tokenLogprobs: values, topLogprobs: tops)
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
