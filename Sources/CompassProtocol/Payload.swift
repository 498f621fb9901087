/// One chat message. `content` may be a string or OpenAI's list of text parts (joined).
public struct ChatMessage: Codable, Sendable, Equatable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }

    private struct Part: Decodable { var type: String?; var text: String? }
    private enum CodingKeys: String, CodingKey { case role, content }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        role = try c.decode(String.self, forKey: .role)
        if let text = try? c.decode(String.self, forKey: .content) {
            content = text
        } else {
            let parts = try c.decode([Part].self, forKey: .content)
            content = parts.compactMap(\.text).joined()
        }
    }
}

/// One request of a batch payload (a JSON array of these).
public struct InferenceRequest: Codable, Sendable, Equatable {
    public var customID: String
    public var prompt: String?
    public var messages: [ChatMessage]?
    public var maxTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    public var stop: [String]?
    public var seed: Int?
    public var ignoreEOS: Bool?

    public init(customID: String, prompt: String? = nil, messages: [ChatMessage]? = nil, maxTokens: Int? = nil,
                temperature: Double? = nil, topP: Double? = nil, stop: [String]? = nil, seed: Int? = nil, ignoreEOS: Bool? = nil) {
        self.customID = customID
        self.prompt = prompt
        self.messages = messages
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.stop = stop
        self.seed = seed
        self.ignoreEOS = ignoreEOS
    }

    enum CodingKeys: String, CodingKey {
        case customID = "custom_id", prompt, messages, maxTokens = "max_tokens", temperature
        case topP = "top_p", stop, seed, ignoreEOS = "ignore_eos"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        customID = try c.decode(String.self, forKey: .customID)
        prompt = try c.decodeIfPresent(String.self, forKey: .prompt)
        messages = try c.decodeIfPresent([ChatMessage].self, forKey: .messages)
        maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens)
        temperature = try c.decodeIfPresent(Double.self, forKey: .temperature)
        topP = try c.decodeIfPresent(Double.self, forKey: .topP)
        // OpenAI accepts `stop` as one string or a list of strings.
        if let one = try? c.decodeIfPresent(String.self, forKey: .stop) {
            stop = [one]
        } else {
            stop = try c.decodeIfPresent([String].self, forKey: .stop)
        }
        seed = try c.decodeIfPresent(Int.self, forKey: .seed)
        ignoreEOS = try c.decodeIfPresent(Bool.self, forKey: .ignoreEOS)
        if prompt == nil && messages == nil {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: "request \(customID) has neither prompt nor messages"))
        }
    }

    /// The text an engine without a chat template sees: the prompt, or the messages' contents joined.
    public var flattenedPrompt: String {
        if let prompt { return prompt }
        return (messages ?? []).map(\.content).joined(separator: "\n")
    }
}

/// The error of one request inside an otherwise successful batch.
public struct RequestError: Codable, Sendable, Equatable {
    public var code: String
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
}

/// One result of a batch result payload (a JSON array of these, in request order).
public struct InferenceResult: Codable, Sendable, Equatable {
    public var customID: String
    public var text: String?
    public var promptTokens: Int
    public var completionTokens: Int
    public var finishReason: String?
    public var error: RequestError?

    public init(customID: String, text: String?, promptTokens: Int, completionTokens: Int, finishReason: String?, error: RequestError? = nil) {
        self.customID = customID
        self.text = text
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.finishReason = finishReason
        self.error = error
    }

    /// A failed request's result.
    public static func failure(_ customID: String, code: String, message: String) -> InferenceResult {
        InferenceResult(customID: customID, text: nil, promptTokens: 0, completionTokens: 0, finishReason: nil,
                        error: RequestError(code: code, message: message))
    }

    enum CodingKeys: String, CodingKey {
        case customID = "custom_id", text, promptTokens = "prompt_tokens", completionTokens = "completion_tokens"
        case finishReason = "finish_reason", error
    }

    /// Every key is written, with null where there is no value, so each result line has one shape.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(customID, forKey: .customID)
        try c.encode(text, forKey: .text)
        try c.encode(promptTokens, forKey: .promptTokens)
        try c.encode(completionTokens, forKey: .completionTokens)
        try c.encode(finishReason, forKey: .finishReason)
        try c.encode(error, forKey: .error)
    }
}

/// Figures a worker attaches to a RESULT (the stats frame); the broker forwards them unread.
public struct ResultStats: Codable, Sendable, Equatable {
    public var requests: Int
    public var failedRequests: Int
    public var promptTokens: Int
    public var completionTokens: Int
    public var engineMilliseconds: Double
    public var worker: String

    public init(requests: Int, failedRequests: Int, promptTokens: Int, completionTokens: Int, engineMilliseconds: Double, worker: String) {
        self.requests = requests
        self.failedRequests = failedRequests
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.engineMilliseconds = engineMilliseconds
        self.worker = worker
    }

    enum CodingKeys: String, CodingKey {
        case requests, failedRequests = "failed_requests", promptTokens = "prompt_tokens"
        case completionTokens = "completion_tokens", engineMilliseconds = "engine_ms", worker
    }
}
