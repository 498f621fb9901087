/// One result of a batch result payload (a JSON array of these, in request order).
public struct InferenceResult: Codable, Sendable, Equatable {
    public var customID: String
    public var text: String?
    public var promptTokens: Int
    public var completionTokens: Int
    public var finishReason: String?
    public var error: RequestError?
    /// The generated tokens' logprobs, when the request asked for `logprobs`.
    public var logprobs: TokenLogprobs?
    /// The prompt's token logprobs, when the request asked for `prompt_logprobs`.
    public var promptLogprobs: TokenLogprobs?
    /// A scoring request's answer: one score per continuation, in order.
    public var scores: [ContinuationScore]?

    public init(customID: String, text: String?, promptTokens: Int, completionTokens: Int, finishReason: String?, error: RequestError? = nil,
                logprobs: TokenLogprobs? = nil, promptLogprobs: TokenLogprobs? = nil, scores: [ContinuationScore]? = nil) {
        self.customID = customID
        self.text = text
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.finishReason = finishReason
        self.error = error
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
        self.scores = scores
    }

    /// A failed request's result.
    public static func failure(_ customID: String, code: String, message: String) -> InferenceResult {
        InferenceResult(customID: customID, text: nil, promptTokens: 0, completionTokens: 0, finishReason: nil,
                        error: RequestError(code: code, message: message))
    }

    enum CodingKeys: String, CodingKey {
        case customID = "custom_id", text, promptTokens = "prompt_tokens", completionTokens = "completion_tokens"
        case finishReason = "finish_reason", error, logprobs, promptLogprobs = "prompt_logprobs", scores
    }

    /// The six keys of every result are always written, with null where there is no value, so each
    /// result line has one shape; logprobs and scores appear only when the request asked for them.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(customID, forKey: .customID)
        try c.encode(text, forKey: .text)
        try c.encode(promptTokens, forKey: .promptTokens)
        try c.encode(completionTokens, forKey: .completionTokens)
        try c.encode(finishReason, forKey: .finishReason)
        try c.encode(error, forKey: .error)
        try c.encodeIfPresent(logprobs, forKey: .logprobs)
        try c.encodeIfPresent(promptLogprobs, forKey: .promptLogprobs)
        try c.encodeIfPresent(scores, forKey: .scores)
    }
}

/// Token logprobs of a prompt or a completion (docs/protocol.md, Payloads).
public struct TokenLogprobs: Codable, Sendable, Equatable {
    public var tokenIDs: [Int]
    /// Each token decoded on its own.
    public var tokens: [String]
    /// Natural-log probabilities; nil for a prompt's first token, which nothing predicts.
    public var tokenLogprobs: [Double?]
    /// Per position, the most likely tokens, most likely first (nil where the logprob is nil).
    public var topLogprobs: [[TopLogprob]?]

    public init(tokenIDs: [Int], tokens: [String], tokenLogprobs: [Double?], topLogprobs: [[TopLogprob]?]) {
        self.tokenIDs = tokenIDs
        self.tokens = tokens
        self.tokenLogprobs = tokenLogprobs
        self.topLogprobs = topLogprobs
    }

    enum CodingKeys: String, CodingKey {
        case tokenIDs = "token_ids", tokens, tokenLogprobs = "token_logprobs", topLogprobs = "top_logprobs"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(tokenIDs, forKey: .tokenIDs)
        try c.encode(tokens, forKey: .tokens)
        var logprobs = c.nestedUnkeyedContainer(forKey: .tokenLogprobs)
        for value in tokenLogprobs { if let value { try logprobs.encode(value) } else { try logprobs.encodeNil() } }
        var tops = c.nestedUnkeyedContainer(forKey: .topLogprobs)
        for value in topLogprobs { if let value { try tops.encode(value) } else { try tops.encodeNil() } }
    }

    /// How many positions.
    public var count: Int { tokenIDs.count }

    /// Positions `range` of these logprobs.
    public func slice(_ range: Range<Int>) -> TokenLogprobs {
        TokenLogprobs(tokenIDs: Array(tokenIDs[range]), tokens: Array(tokens[range]),
                      tokenLogprobs: Array(tokenLogprobs[range]), topLogprobs: Array(topLogprobs[range]))
    }

    /// These positions followed by `other`'s (a prompt's then its completion's, for `echo`).
    public func appending(_ other: TokenLogprobs) -> TokenLogprobs {
        TokenLogprobs(tokenIDs: tokenIDs + other.tokenIDs, tokens: tokens + other.tokens,
                      tokenLogprobs: tokenLogprobs + other.tokenLogprobs, topLogprobs: topLogprobs + other.topLogprobs)
    }
}

/// One alternative at a position of `TokenLogprobs`.
public struct TopLogprob: Codable, Sendable, Equatable {
    public var tokenID: Int
    public var token: String
    public var logprob: Double

    public init(tokenID: Int, token: String, logprob: Double) {
        self.tokenID = tokenID
        self.token = token
        self.logprob = logprob
    }

    enum CodingKeys: String, CodingKey { case tokenID = "token_id", token, logprob }
}

/// A continuation's score: the sum of its tokens' logprobs after the context, how many tokens it
/// has, and whether greedy decoding from the context would have produced exactly those tokens.
public struct ContinuationScore: Codable, Sendable, Equatable {
    public var logprob: Double
    public var tokens: Int
    public var greedy: Bool

    public init(logprob: Double, tokens: Int, greedy: Bool) {
        self.logprob = logprob
        self.tokens = tokens
        self.greedy = greedy
    }
}
