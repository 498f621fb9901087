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

    /// A completion choice's text; with `echo`, the prompt first (a token-id prompt as the tokens
    /// the engine decoded, joined: the gateway has no tokenizer of its own).
    static func text(_ call: Call, _ index: Int, _ r: InferenceResult) -> String {
        let text = r.text ?? ""
        guard call.echo else { return text }
        if let prompt = call.requests[index].prompt { return prompt + text }
        return (r.promptLogprobs?.tokens.joined() ?? "") + text
    }

    /// A completion choice's `logprobs` in OpenAI's completions shape: `tokens`, `token_logprobs`,
    /// `top_logprobs` (per position a token -> logprob object, null where the logprob is) and
    /// `text_offset` (where each token starts in the tokens joined, which is the choice's text for
    /// a tokenizer whose tokens carry their spaces); with `echo` the prompt's positions come
    /// first, the first of them null.
    /// As OpenAI says, each position's object holds the k most likely tokens and the chosen one
    /// (so k + 1 entries where the chosen token is not among them): lm-evaluation-harness
    /// calls a token greedy when its logprob is the largest value there.
    static func completionLogprobs(_ call: Call, _ r: InferenceResult) -> JSON {
        guard call.wantsLogprobs else { return .null }
        var positions = r.logprobs ?? TokenLogprobs(tokenIDs: [], tokens: [], tokenLogprobs: [], topLogprobs: [])
        if call.echo, let prompt = r.promptLogprobs { positions = prompt.appending(positions) }
        var offsets: [JSON] = []
        var offset = 0
        for token in positions.tokens {
            offsets.append(.int(offset))
            offset += token.unicodeScalars.count  // characters as Python counts them
        }
        let tops: [JSON] = zip(positions.tokens, zip(positions.tokenLogprobs, positions.topLogprobs)).map { token, pair -> JSON in
            guard let logprob = pair.0, let top = pair.1 else { return .null }
            var entries: [(String, JSON)] = []
            for alternative in top where !entries.contains(where: { $0.0 == alternative.token }) {
                entries.append((alternative.token, .double(alternative.logprob)))
            }
            if !entries.contains(where: { $0.0 == token }) { entries.append((token, .double(logprob))) }
            return .object(entries)
        }
        return .object([
            ("tokens", .array(positions.tokens.map { .string($0) })),
            ("token_logprobs", .array(positions.tokenLogprobs.map { $0.map { .double($0) } ?? .null })),
            ("top_logprobs", .array(tops)),
            ("text_offset", .array(offsets)),
        ])
    }

    /// A chat choice's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`.
    static func chatLogprobs(_ call: Call, _ r: InferenceResult) -> JSON {
        guard call.wantsLogprobs else { return .null }
        func bytes(_ token: String) -> JSON { .array(token.utf8.map { .int(Int($0)) }) }
        let positions = r.logprobs ?? TokenLogprobs(tokenIDs: [], tokens: [], tokenLogprobs: [], topLogprobs: [])
        let content: [JSON] = positions.tokens.indices.map { i -> JSON in
            let token = positions.tokens[i]
            let top = (positions.topLogprobs[i] ?? []).map { alternative -> JSON in
                .object([("token", .string(alternative.token)), ("logprob", .double(alternative.logprob)), ("bytes", bytes(alternative.token))])
            }
            return .object([("token", .string(token)), ("logprob", positions.tokenLogprobs[i].map { .double($0) } ?? .null),
                            ("bytes", bytes(token)), ("top_logprobs", .array(top))])
        }
        return .object([("content", .array(content))])
    }

    /// The non-streaming body: a `text_completion` or a `chat.completion`.
    static func body(_ call: Call, _ results: [InferenceResult], id: String, created: Int) -> JSON {
        let choices: [JSON] = results.enumerated().map { i, r in
            switch call.endpoint {
            case .completions:
                .object([("text", .string(text(call, i, r))), ("index", .int(i)), ("logprobs", completionLogprobs(call, r)),
                         ("finish_reason", .string(finishReason(r)))])
            case .chat:
                .object([("index", .int(i)),
                         ("message", .object([("role", "assistant"), ("content", .string(r.text ?? ""))])),
                         ("logprobs", chatLogprobs(call, r)), ("finish_reason", .string(finishReason(r)))])
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
    /// choice comes as one chunk with its whole text (and its logprobs), then a chunk with its
    /// finish_reason; with `stream_options.include_usage`, a last chunk with no choices carries the usage.
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
                                           ("logprobs", chatLogprobs(call, r)), ("finish_reason", .null)])]))
                out.append(chunk([.object([("index", .int(i)), ("delta", .object([])), ("logprobs", .null),
                                           ("finish_reason", .string(finishReason(r)))])]))
            case .completions:
                out.append(chunk([.object([("text", .string(text(call, i, r))), ("index", .int(i)),
                                           ("logprobs", completionLogprobs(call, r)), ("finish_reason", .null)])]))
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
