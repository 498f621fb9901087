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

/// The error of one request inside an otherwise successful batch.
public struct RequestError: Codable, Sendable, Equatable {
    public var code: String
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
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
    /// How full a continuously batching engine was (absent for engines that run a batch at a time).
    public var engine: EngineStepStats?

    public init(requests: Int, failedRequests: Int, promptTokens: Int, completionTokens: Int, engineMilliseconds: Double, worker: String,
                engine: EngineStepStats? = nil) {
        self.requests = requests
        self.failedRequests = failedRequests
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.engineMilliseconds = engineMilliseconds
        self.worker = worker
        self.engine = engine
    }

    enum CodingKeys: String, CodingKey {
        case requests, failedRequests = "failed_requests", promptTokens = "prompt_tokens"
        case completionTokens = "completion_tokens", engineMilliseconds = "engine_ms", worker, engine
    }
}
