import CompassProtocol
import Foundation
import Testing

@Suite("Input lines")
struct InputLineTests {
    func parse(_ s: String) -> Result<InferenceRequest, InputLine.Problem> { InputLine.parse(Array(s.utf8)) }

    @Test func compassLine() throws {
        let r = try parse(#"{"custom_id":"q1","prompt":"hi","max_tokens":5,"stop":"\n","temperature":0.5}"#).get()
        #expect(r == InferenceRequest(customID: "q1", prompt: "hi", maxTokens: 5, temperature: 0.5, stop: ["\n"]))
    }

    @Test func openAIBatchLine() throws {
        let line = #"{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt","messages":[{"role":"user","content":"Hello"}],"max_completion_tokens":7}}"#
        let r = try parse(line).get()
        #expect(r.customID == "r1")
        #expect(r.messages == [ChatMessage(role: "user", content: "Hello")])
        #expect(r.maxTokens == 7)
    }

    @Test func contentPartsAreJoined() throws {
        let r = try parse(#"{"custom_id":"a","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#).get()
        #expect(r.messages?.first?.content == "ab")
    }

    @Test(arguments: [
        ("not json", nil as String?, "not a JSON object"),
        (#"{"prompt":"x"}"#, nil, "custom_id"),
        (#"{"custom_id":"a"}"#, "a", "give one of prompt, prompt_token_ids or messages"),
        (#"{"custom_id":"a","prompt":3}"#, "a", "prompt"),
        (#"{"custom_id":"a","url":"/v1/embeddings","body":{"input":"x"}}"#, "a", "not supported"),
    ])
    func problemsNameTheirCause(line: String, id: String?, fragment: String) {
        guard case .failure(let problem) = parse(line) else { Issue.record("accepted \(line)"); return }
        #expect(problem.customID == id)
        #expect(problem.message.contains(fragment), "\(problem.message)")
    }

    @Test func resultLinesAlwaysCarryEveryKey() throws {
        let ok = InferenceResult(customID: "a", text: "t", promptTokens: 1, completionTokens: 1, finishReason: "stop")
        let json = try #require(String(data: try JSONEncoder().encode(ok), encoding: .utf8))
        #expect(json.contains(#""error":null"#))
    }
}
