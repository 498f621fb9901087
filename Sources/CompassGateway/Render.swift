import CompassProtocol
import Foundation

/// OpenAI response bodies for a call's results (one result per request of the call, in order).
enum Render {
    static func newID(_ prefix: String) -> String {
        prefix + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(24)
    }

    static func finishReason(_ r: InferenceResult) -> String {
        switch r.finishReason {
        case "length", "stop": r.finishReason!
        case nil: "stop"
        case let other?: other
        }
    }

    static func usage(_ results: [InferenceResult]) -> JSON {
        let prompt = results.reduce(0) { $0 + $1.promptTokens }
        let completion = results.reduce(0) { $0 + $1.completionTokens }
        return .object([("prompt_tokens", .int(prompt)), ("completion_tokens", .int(completion)),
                        ("total_tokens", .int(prompt + completion))])
    }

    static func text(_ call: Call, _ index: Int, _ r: InferenceResult) -> String {
        let text = r.text ?? ""
        if call.echo, let prompt = call.requests[index].prompt { return prompt + text }
        return text
    }

    /// The non-streaming body: a `text_completion` or a `chat.completion`.
    static func body(_ call: Call, _ results: [InferenceResult], id: String, created: Int) -> JSON {
        let choices: [JSON] = results.enumerated().map { i, r in
            switch call.endpoint {
            case .completions:
                .object([("text", .string(text(call, i, r))), ("index", .int(i)), ("logprobs", .null),
                         ("finish_reason", .string(finishReason(r)))])
            case .chat:
                .object([("index", .int(i)),
                         ("message", .object([("role", "assistant"), ("content", .string(r.text ?? ""))])),
                         ("logprobs", .null), ("finish_reason", .string(finishReason(r)))])
            }
        }
        return .object([
            ("id", .string(id)),
            ("object", .string(call.endpoint == .chat ? "chat.completion" : "text_completion")),
            ("created", .int(created)),
            ("model", .string(call.model)),
            ("choices", .array(choices)),
            ("usage", usage(results)),
        ])
    }

    /// The server-sent events of a streamed answer. The engines are not token-streaming, so each
    /// choice comes as one chunk with its whole text, then a chunk with its finish_reason; with
    /// `stream_options.include_usage`, a last chunk with no choices carries the usage.
    static func chunks(_ call: Call, _ results: [InferenceResult], id: String, created: Int) -> [JSON] {
        let object = call.endpoint == .chat ? "chat.completion.chunk" : "text_completion"
        func chunk(_ choices: [JSON], usage: JSON? = nil) -> JSON {
            var pairs: [(String, JSON)] = [("id", .string(id)), ("object", .string(object)), ("created", .int(created)),
                                           ("model", .string(call.model)), ("choices", .array(choices))]
            if call.includeUsage { pairs.append(("usage", usage ?? .null)) }
            return .object(pairs)
        }
        var out: [JSON] = []
        for (i, r) in results.enumerated() {
            switch call.endpoint {
            case .chat:
                out.append(chunk([.object([("index", .int(i)), ("delta", .object([("role", "assistant"), ("content", .string(r.text ?? ""))])),
                                           ("logprobs", .null), ("finish_reason", .null)])]))
                out.append(chunk([.object([("index", .int(i)), ("delta", .object([])), ("logprobs", .null),
                                           ("finish_reason", .string(finishReason(r)))])]))
            case .completions:
                out.append(chunk([.object([("text", .string(text(call, i, r))), ("index", .int(i)), ("logprobs", .null),
                                           ("finish_reason", .null)])]))
                out.append(chunk([.object([("text", ""), ("index", .int(i)), ("logprobs", .null),
                                           ("finish_reason", .string(finishReason(r)))])]))
            }
        }
        if call.includeUsage { out.append(chunk([], usage: usage(results))) }
        return out
    }

    /// The server-sent-events bytes of `chunks`, ending with `data: [DONE]`.
    static func eventStream(_ chunks: [JSON]) -> [UInt8] {
        var out: [UInt8] = []
        for c in chunks {
            out += Array("data: ".utf8)
            c.write(into: &out)
            out += Array("\n\n".utf8)
        }
        out += Array("data: [DONE]\n\n".utf8)
        return out
    }
}
