import Foundation

/// One request of a batch payload (a JSON array of these): a generation request (a prompt and
/// sampling parameters, optionally logprobs) or a scoring request (a context in `prompt` or
/// `promptTokenIDs` and `continuations` to score after it). docs/protocol.md, Payloads, states
/// the fields and rules; `RequestRules` checks them, and decoding goes through it, so a request
/// value is always a valid one.
public struct InferenceRequest: Codable, Sendable, Equatable {
    public var customID: String
    public var prompt: String?
    /// The input as token ids of the served model's tokenizer.
    public var promptTokenIDs: [Int]?
    public var messages: [ChatMessage]?
    public var maxTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    public var stop: [String]?
    public var seed: Int?
    public var ignoreEOS: Bool?
    /// Logprobs of the generated tokens with this many alternatives (0: the chosen token only).
    public var logprobs: Int?
    /// Logprobs of the prompt's tokens with this many alternatives.
    public var promptLogprobs: Int?
    /// A scoring request's continuations, each scored after the context.
    public var continuations: [Continuation]?

    /// A continuation to score: text (tokenized as docs/protocol.md says) or token ids.
    public enum Continuation: Codable, Sendable, Equatable {
        case text(String)
        case tokens([Int])

        public init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let text = try? c.decode(String.self) { self = .text(text) } else { self = .tokens(try c.decode([Int].self)) }
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self {
            case .text(let text): try c.encode(text)
            case .tokens(let ids): try c.encode(ids)
            }
        }
    }

    public init(customID: String, prompt: String? = nil, messages: [ChatMessage]? = nil, maxTokens: Int? = nil,
                temperature: Double? = nil, topP: Double? = nil, stop: [String]? = nil, seed: Int? = nil, ignoreEOS: Bool? = nil,
                promptTokenIDs: [Int]? = nil, logprobs: Int? = nil, promptLogprobs: Int? = nil, continuations: [Continuation]? = nil) {
        self.customID = customID
        self.prompt = prompt
        self.messages = messages
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.stop = stop
        self.seed = seed
        self.ignoreEOS = ignoreEOS
        self.promptTokenIDs = promptTokenIDs
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
        self.continuations = continuations
    }

    /// A scoring request: it generates nothing and is answered with `scores`.
    public var isScoring: Bool { continuations != nil }

    enum CodingKeys: String, CodingKey {
        case customID = "custom_id", prompt, promptTokenIDs = "prompt_token_ids", messages, maxTokens = "max_tokens", temperature
        case topP = "top_p", stop, seed, ignoreEOS = "ignore_eos", logprobs, promptLogprobs = "prompt_logprobs", continuations
    }

    /// Decodes through `RequestRules`, so every rule of the shared table holds for a decoded value.
    public init(from decoder: any Decoder) throws {
        let json = try JSON(from: decoder)
        switch RequestRules.validate(json) {
        case .success(let request): self = request
        case .failure(let problem):
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: problem.message))
        }
    }

    /// Absent fields are left out (the payload stays as small as the producer wrote it).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(customID, forKey: .customID)
        try c.encodeIfPresent(prompt, forKey: .prompt)
        try c.encodeIfPresent(promptTokenIDs, forKey: .promptTokenIDs)
        try c.encodeIfPresent(messages, forKey: .messages)
        try c.encodeIfPresent(maxTokens, forKey: .maxTokens)
        try c.encodeIfPresent(temperature, forKey: .temperature)
        try c.encodeIfPresent(topP, forKey: .topP)
        try c.encodeIfPresent(stop, forKey: .stop)
        try c.encodeIfPresent(seed, forKey: .seed)
        try c.encodeIfPresent(ignoreEOS, forKey: .ignoreEOS)
        try c.encodeIfPresent(logprobs, forKey: .logprobs)
        try c.encodeIfPresent(promptLogprobs, forKey: .promptLogprobs)
        try c.encodeIfPresent(continuations, forKey: .continuations)
    }

    /// The text an engine without a chat template sees: the prompt, or the messages' contents
    /// joined (token-id prompts have no text here: the engine's tokenizer decodes them).
    public var flattenedPrompt: String {
        if let prompt { return prompt }
        return (messages ?? []).map(\.content).joined(separator: "\n")
    }
}
