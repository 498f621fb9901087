/// The rules of a payload request (docs/protocol.md, Payloads), in one place: `compass submit`,
/// the gateway and the synthetic engine all read requests through `validate`. The messages are
/// those of the shared table `spec/requests.json`, which the Python validator is tested against
/// too, so both languages accept and refuse the same requests with the same words.
public enum RequestRules {
    public static let maxTokensLimit = 1_048_576
    public static let maxTemperature = 100.0
    public static let maxLogprobs = 20

    /// Why a request is invalid. `customID` is nil when the request has none to name.
    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        public var customID: String?
        public var message: String
        public init(customID: String?, message: String) {
            self.customID = customID
            self.message = message
        }
        public var description: String { message }
    }

    /// A valid request read from `json`, or the first rule it breaks. Null fields count as
    /// absent; unknown fields are ignored.
    public static func validate(_ json: JSON) -> Result<InferenceRequest, Problem> {
        guard case .object = json else { return .failure(Problem(customID: nil, message: "a request must be a JSON object")) }
        guard let customID = json["custom_id"]?.string, !customID.isEmpty else {
            return .failure(Problem(customID: nil, message: "custom_id must be a non-empty string"))
        }
        do throws(Problem) {
            return .success(try read(Fields(json: json, customID: customID)))
        } catch {
            return .failure(error)
        }
    }

    private static func read(_ f: Fields) throws(Problem) -> InferenceRequest {
        var request = InferenceRequest(customID: f.customID)
        let inputs = ["prompt", "prompt_token_ids", "messages"].filter { f.value($0) != nil }
        if inputs.isEmpty { throw f.problem("give one of prompt, prompt_token_ids or messages") }
        if inputs.count > 1 { throw f.problem("give only one of prompt, prompt_token_ids or messages") }
        if let prompt = f.value("prompt") {
            guard let text = prompt.string else { throw f.problem("prompt must be a string") }
            request.prompt = text
        }
        if let ids = f.value("prompt_token_ids") {
            guard let list = tokenIDs(ids) else { throw f.problem("prompt_token_ids must be a non-empty list of non-negative integers") }
            request.promptTokenIDs = list
        }
        if let messages = f.value("messages") { request.messages = try chat(messages, f) }
        request.maxTokens = try f.integer("max_tokens", in: 0...maxTokensLimit, "max_tokens must be an integer from 0 to \(maxTokensLimit)")
        request.temperature = try f.number("temperature", "temperature must be a number from 0 to 100") { $0 >= 0 && $0 <= maxTemperature }
        request.topP = try f.number("top_p", "top_p must be a number above 0 and at most 1") { $0 > 0 && $0 <= 1 }
        if let stop = f.value("stop") {
            let list: [String]? = stop.string.map { [$0] } ?? stop.array.flatMap { items in
                let strings = items.compactMap(\.string)
                return strings.count == items.count ? strings : nil
            }
            guard let list else { throw f.problem("stop must be a string or a list of strings") }
            let kept = list.filter { !$0.isEmpty }
            request.stop = kept.isEmpty ? nil : kept
        }
        request.seed = try f.integer("seed", in: Int.min...Int.max, "seed must be an integer")
        if let eos = f.value("ignore_eos") {
            guard let flag = eos.bool else { throw f.problem("ignore_eos must be true or false") }
            request.ignoreEOS = flag
        }
        request.logprobs = try f.integer("logprobs", in: 0...maxLogprobs, "logprobs must be an integer from 0 to \(maxLogprobs)")
        request.promptLogprobs = try f.integer("prompt_logprobs", in: 0...maxLogprobs, "prompt_logprobs must be an integer from 0 to \(maxLogprobs)")
        if let continuations = f.value("continuations") {
            request.continuations = try scoring(continuations, request, f)
        }
        return request
    }

    private static func scoring(_ value: JSON, _ request: InferenceRequest, _ f: Fields) throws(Problem) -> [InferenceRequest.Continuation] {
        guard let items = value.array, !items.isEmpty else { throw badContinuations(f) }
        var out: [InferenceRequest.Continuation] = []
        out.reserveCapacity(items.count)
        for item in items {
            if let text = item.string, !text.isEmpty {
                out.append(.text(text))
            } else if let ids = tokenIDs(item) {
                out.append(.tokens(ids))
            } else {
                throw badContinuations(f)
            }
        }
        if request.messages != nil { throw f.problem("continuations need a prompt or prompt_token_ids as their context") }
        if let max = request.maxTokens, max != 0 { throw f.problem("continuations score, they do not generate: leave max_tokens out or 0") }
        if request.logprobs != nil || request.promptLogprobs != nil {
            throw f.problem("continuations cannot be combined with logprobs or prompt_logprobs")
        }
        return out
    }

    private static func badContinuations(_ f: Fields) -> Problem {
        f.problem("continuations must be a non-empty list of non-empty strings or token-id lists")
    }

    private static func tokenIDs(_ value: JSON) -> [Int]? {
        guard let items = value.array, !items.isEmpty else { return nil }
        var out: [Int] = []
        out.reserveCapacity(items.count)
        for item in items {
            guard case .int(let id) = item, id >= 0 else { return nil }
            out.append(id)
        }
        return out
    }

    private static func chat(_ value: JSON, _ f: Fields) throws(Problem) -> [ChatMessage] {
        guard let list = value.array, !list.isEmpty else { throw f.problem("messages must be a non-empty list") }
        var out: [ChatMessage] = []
        for (i, item) in list.enumerated() {
            guard item.isObject else { throw f.problem("messages[\(i)] must be an object") }
            guard let role = item["role"]?.string else { throw f.problem("messages[\(i)].role must be a string") }
            let content: String
            switch item["content"] {
            case .none, .null?: content = ""
            case .string(let s)?: content = s
            case .array(let parts)?:
                var text = ""
                for part in parts {
                    guard part.isObject, part["type"].map({ $0 == .string("text") || $0.isNull }) ?? true,
                          let s = part["text"]?.string else {
                        throw f.problem("messages[\(i)].content must be a string or a list of text parts")
                    }
                    text += s
                }
                content = text
            default:
                throw f.problem("messages[\(i)].content must be a string or a list of text parts")
            }
            out.append(ChatMessage(role: role, content: content))
        }
        return out
    }

    /// Typed reads of one request object's fields; every failure names its field.
    private struct Fields {
        let json: JSON
        let customID: String

        func value(_ key: String) -> JSON? {
            guard let v = json[key], !v.isNull else { return nil }
            return v
        }

        func problem(_ message: String) -> Problem { Problem(customID: customID, message: message) }

        /// An integer (a JSON number without a fraction; never a bool) within `range`.
        func integer(_ key: String, in range: ClosedRange<Int>, _ message: String) throws(Problem) -> Int? {
            guard let v = value(key) else { return nil }
            guard case .int(let i) = v, range.contains(i) else { throw problem(message) }
            return i
        }

        /// A number (never a bool) that passes `check`.
        func number(_ key: String, _ message: String, _ check: (Double) -> Bool) throws(Problem) -> Double? {
            guard let v = value(key) else { return nil }
            guard let d = v.double, d.isFinite, check(d) else { throw problem(message) }
            return d
        }
    }
}
