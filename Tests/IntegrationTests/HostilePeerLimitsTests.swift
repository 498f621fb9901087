import CompassBroker
import CompassClient
import CompassProtocol
import CompassWire
import Foundation
import Testing
import ZMQ

#if canImport(Glibc)
import Glibc
#endif

/// Issue 20, the broker's bounds and checks: per-message size (not per frame), small control
/// messages, DISCONNECT that forgets the worker, checked results, payload rules, bounded sessions.
@Suite("Hostile peers against the real broker: bounds per message and per connection", .serialized, .timeLimit(.minutes(3)))
struct HostilePeerLimitsTests {
    static let payload = #"[{"custom_id":"a","prompt":"hello world"}]"#
    static var empty: Frame { Frame(bytes: [UInt8]()) }

    /// Waits until the broker lists `worker`, heartbeating meanwhile (it would expire in 300 ms).
    static func waitRegistered(_ worker: RawWorker, _ client: CompassClient) async throws {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            try worker.send(.heartbeat(stats: empty))
            _ = try worker.next()
            if try await status(client).scheduler.workers.count == 1 { return }
        }
        throw HarnessError("the worker did not register within 20 s")
    }

    @Test("A SUBMIT whose frames together pass the message limit, each under the frame limit, is refused bad_frame; so is one of 40 frames; the connection goes on")
    func submitBoundedPerMessage() async throws {
        let dir = TempDir()
        // 1 MiB payloads: a message may have 2 MiB in all, and so may each frame (ZMQ_MAXMSGSIZE).
        let broker = try await BrokerProcess(in: dir, arguments: ["--max-payload-bytes", "\(1 << 20)"])
        let context = try ZMQContext()
        let producer = try RawProducer(context, broker.frontend)
        try producer.send(.hello(session: "s-big"))
        _ = try producer.receive(until: \.isWelcome)
        // A meta frame may be longer than 16 bytes (extra bytes are ignored): 1.5 MiB of it plus a
        // 0.9 MiB payload is 2.4 MiB, every frame under 2 MiB.
        var meta = BatchMeta(requestCount: 1).bytes
        meta += [UInt8](repeating: 0, count: 1_500_000)
        var padded = Array(Self.payload.utf8)
        padded += [UInt8](repeating: UInt8(ascii: " "), count: 900_000)
        try producer.socket.send([WireProtocol.headerFrame(), Field.u8(2), Frame(string: "s-big-1"), Frame(string: "default"),
                                  Frame(bytes: meta), Frame(bytes: padded)])
        let refused = try producer.sync()
        let rejection = try #require(refused.first { $0.rejectionCode != nil }, "\(refused)")
        #expect(rejection.rejectionCode == "bad_frame")
        guard case .rejected(_, _, let message, _) = rejection else { return }
        #expect(message.contains("whole message"), "\(message)")
        #expect(!refused.contains { $0.isAccepted }, "\(refused)")

        // 40 small frames: more than any message has.
        try producer.socket.send([WireProtocol.headerFrame(), Field.u8(5)] + (0..<38).map { _ in Frame(string: "x") })
        let many = try producer.sync()
        #expect(many.compactMap(\.rejectionCode) == ["bad_frame"], "\(many)")
        if case .rejected(_, _, let text, _)? = many.first(where: { $0.rejectionCode != nil }) {
            #expect(text.contains("at most 16 frames"), "\(text)")
        }

        // The same connection still submits.
        try producer.submit("s-big-2", Self.payload)
        #expect(try producer.sync().contains { $0.isAccepted })
    }

    @Test("Oversized worker messages (RESULT over the message limit, HEARTBEAT or READY over the control limit) get DISCONNECT bad_frame at once and cost no decoding")
    func workerMessagesBounded() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let client = try testClient(broker.frontend)
        defer { client.close() }
        _ = try await status(client)

        // A HEARTBEAT with an 8 MiB gpus array (the old broker decoded it: 1.8 s with every pool stalled).
        let worker = try RawWorker(context, broker.backend)
        try await Self.waitRegistered(worker, client)
        var gpus = #"{"gpus":["#
        let one = #"{"index":0,"uuid":"GPU-00000000-0000-0000-0000-000000000000","name":"NVIDIA H100 80GB HBM3","memory_used_mib":1,"memory_total_mib":81559,"utilization_percent":3},"#
        gpus += String(repeating: one, count: (8 << 20) / one.utf8.count)
        gpus += #"{"index":1}]}"#
        let sent = Date()
        try worker.send(.heartbeat(stats: Frame(string: gpus)))
        var reason: String?
        while reason == nil, Date().timeIntervalSince(sent) < 20 {
            if case .disconnect(let r)? = try worker.next() { reason = r }
        }
        let took = Date().timeIntervalSince(sent)
        #expect(reason?.hasPrefix("bad_frame:") == true, "\(reason ?? "no DISCONNECT")")
        #expect(reason?.contains("\(WireProtocol.maxControlMessageBytes)") == true, "\(reason ?? "")")
        #expect(took < 1.0, "the refusal took \(took) s")
        // DISCONNECT means the broker forgot it.
        #expect(try await status(client).scheduler.workers.isEmpty)

        // A READY with a 100 KiB model name: over the control limit, never registered.
        let socket = try context.socket(.dealer)
        try socket.set([.linger(milliseconds: 0), .receiveTimeout(milliseconds: 5000)])
        try socket.connect(broker.backend)
        let caps = WorkerCapabilities(pool: "default", tp: 1, gpus: [], model: String(repeating: "m", count: 100_000), engine: "raw",
                                      maxBatch: 1, credit: 1, pid: 1, host: "h", version: "0")
        try socket.send(WorkerMessage.ready(capabilities: Frame(bytes: try JSONEncoder().encode(caps))).encode())
        let reply = try BrokerWorkerMessage.decode(try #require(try socket.receive())[...])
        guard case .disconnect(let readyReason) = reply else { Issue.record("expected DISCONNECT, got \(reply)"); return }
        #expect(readyReason.hasPrefix("bad_frame:"), "\(readyReason)")
        #expect(try await status(client).scheduler.workers.isEmpty)

        // A RESULT of 1.5 MiB stats and 1 MiB payload, against a broker whose message limit is 2 MiB.
        let small = try await BrokerProcess(in: dir, name: "small", arguments: ["--max-payload-bytes", "\(1 << 20)"])
        let producer = try RawProducer(context, small.frontend)
        try producer.send(.hello(session: "s-res"))
        try producer.submit("s-res-1", Self.payload)
        _ = try producer.receive(until: \.isAccepted)
        let greedy = try RawWorker(context, small.backend)
        var batch: (id: String, attempt: UInt32)?
        let deadline = Date().addingTimeInterval(20)
        while batch == nil, Date() < deadline {
            if case .batch(let id, let attempt, _, _)? = try greedy.next() { batch = (id, attempt) }
        }
        let b = try #require(batch)
        let stats = "{\"pad\":\"" + String(repeating: "s", count: 1_500_000) + "\"}"
        let result = "[{\"custom_id\":\"a\",\"text\":\"" + String(repeating: "t", count: 1_000_000) + "\"}]"
        try greedy.send(.result(batchID: b.id, attempt: b.attempt, stats: Frame(string: stats), payload: Frame(string: result)))
        var refusal: String?
        while refusal == nil, Date() < deadline {
            if case .disconnect(let r)? = try greedy.next() { refusal = r }
        }
        #expect(refusal?.hasPrefix("bad_frame:") == true, "\(refusal ?? "no DISCONNECT")")
        // The producer gets no RESULT from it: the batch is back in the queue.
        #expect(try producer.sync().filter(\.isOutcome).isEmpty)
    }

    @Test("DISCONNECT for a malformed message forgets the worker: its batch goes to another worker; READY needs only pool and credit; refusals name the field, not Swift's DecodingError")
    func disconnectForgetsWorker() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let careless = try RawWorker(context, broker.backend, credit: 1)
        try await Self.waitRegistered(careless, client)
        let submit = Task { try await client.submit([InferenceRequest(customID: "d", prompt: "disconnect me")], pool: "default", batchID: "dc") }
        var got: (id: String, attempt: UInt32)?
        let deadline = Date().addingTimeInterval(20)
        while got == nil, Date() < deadline {
            try careless.send(.heartbeat(stats: Self.empty))
            if case .batch(let id, let attempt, _, _)? = try careless.next() { got = (id, attempt) }
        }
        try #require(got != nil)
        // A PROGRESS whose attempt is 3 bytes: malformed.
        try careless.socket.send([WireProtocol.headerFrame(), Field.u8(0x13), Frame(string: "dc"), Frame(bytes: [0, 0, 1]),
                                  Frame(bytes: [0, 0, 0, 0]), Frame(bytes: [0, 0, 0, 1])])
        var reason: String?
        while reason == nil, Date() < deadline {
            try careless.send(.heartbeat(stats: Self.empty))
            if case .disconnect(let r)? = try careless.next() { reason = r }
        }
        #expect(reason?.hasPrefix("bad_frame:") == true, "\(reason ?? "no DISCONNECT")")
        // The broker forgot it although it keeps heartbeating: the batch is queued again, and a
        // real worker completes it.
        var forgotten = false
        let until = Date().addingTimeInterval(3)
        while !forgotten, Date() < until {
            try careless.send(.heartbeat(stats: Self.empty))
            _ = try careless.next()
            forgotten = try await status(client).scheduler.workers.isEmpty
        }
        #expect(forgotten, "the worker that was sent DISCONNECT is still registered")
        let worker = try startWorker(broker.backend, in: dir, name: "w")
        try await worker.waitForLog("registered with broker")
        let outcome = try await submit.value
        guard case .completed = outcome.status else { Issue.record("not completed: \(outcome)"); return }
        #expect(outcome.attempts == 2)

        // READY with only the required fields is welcomed.
        func ready(_ json: String) throws -> BrokerWorkerMessage {
            let socket = try context.socket(.dealer)
            try socket.set([.linger(milliseconds: 0), .receiveTimeout(milliseconds: 5000)])
            try socket.connect(broker.backend)
            try socket.send(WorkerMessage.ready(capabilities: Frame(string: json)).encode())
            return try BrokerWorkerMessage.decode(try #require(try socket.receive())[...])
        }
        guard case .welcome = try ready(#"{"pool":"default","credit":1}"#) else { Issue.record("a minimal READY was not welcomed"); return }
        for (json, expected) in [(#"{"pool":"default"}"#, "missing required field 'credit'"),
                                 (#"{"pool":"default","credit":"two"}"#, "field 'credit' must be an integer"),
                                 (#"{"pool":"default","credit":1,"gpus":[{"index":"x"}]}"#, "field 'gpus[0].index' must be an integer"),
                                 (#"{"pool":"default","credit":1,"credit_mode":"sometimes"}"#, "field 'credit_mode' has an invalid value"),
                                 ("not json", "not a valid JSON document")] {
            let reply = try ready(json)
            guard case .disconnect(let why) = reply else { Issue.record("\(json): expected DISCONNECT, got \(reply)"); continue }
            #expect(why.contains(expected), "\(json): \(why)")
            for swiftism in ["DecodingError", "keyNotFound", "CodingKeys", "typeMismatch", "debugDescription"] {
                #expect(!why.contains(swiftism), "\(json): \(why)")
            }
        }
    }

    @Test("Results are checked: not JSON, invalid UTF-8, or a result count other than the batch's requests fail the attempt as engine_error, never reach the producer")
    func resultsChecked() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let producer = try RawProducer(context, broker.frontend)
        try producer.send(.hello(session: "s-check"))
        try producer.submit("s-check-1", Self.payload, maxAttempts: 3)
        _ = try producer.receive(until: \.isAccepted)
        let worker = try RawWorker(context, broker.backend, credit: 1)
        let bad: [[UInt8]] = [Array("not json".utf8), Array(#"[{"custom_id":"a"},{"custom_id":"b"}]"#.utf8),
                              Array(#"[{"custom_id":"a","text":""#.utf8) + [0xff, 0xfe] + Array(#""}]"#.utf8)]
        var answered = 0
        let deadline = Date().addingTimeInterval(20)
        while answered < bad.count, Date() < deadline {
            try worker.send(.heartbeat(stats: Self.empty))
            guard case .batch(let id, let attempt, _, _)? = try worker.next() else { continue }
            try worker.send(.result(batchID: id, attempt: attempt, stats: Frame(string: "{}"), payload: Frame(bytes: bad[answered])))
            try worker.send(.credit(1))
            answered += 1
        }
        #expect(answered == 3)
        let replies = try producer.receive(until: \.isOutcome)
        guard case .failed(let id, let attempts, let code, let message, _)? = replies.last else { Issue.record("\(replies)"); return }
        #expect(id == "s-check-1")
        #expect(attempts == 3)
        #expect(code == "engine_error")
        #expect(message.contains("RESULT was refused") && message.contains("UTF-8"), "\(message)")
        #expect(!replies.contains { $0.isResult }, "\(replies)")
    }

    @Test("Payload rules: invalid UTF-8 and lone surrogates are bad_payload, a wrong request_count too; CANCEL of a finished batch re-sends its outcome; ACK of an unknown id is unknown_batch")
    func payloadRulesAndReplies() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let producer = try RawProducer(context, broker.frontend)
        try producer.send(.hello(session: "s-rules"))
        _ = try producer.receive(until: \.isWelcome)
        func submit(_ id: String, _ payload: [UInt8], count: UInt32 = 1) async throws -> ProducerReply? {
            try producer.send(.submit(batchID: id, pool: "default", meta: BatchMeta(requestCount: count), payload: Frame(bytes: payload)))
            return try producer.sync().first { $0.isAccepted || $0.rejectionCode != nil }
        }
        let invalidUTF8 = Array(#"[{"custom_id":"a","prompt":""#.utf8) + [0xc0, 0xaf] + Array(#""}]"#.utf8)
        await #expect(try submit("r-1", invalidUTF8)?.rejectionCode == "bad_payload")
        await #expect(try submit("r-2", Array(#"[{"custom_id":"a","prompt":"\ud800 alone"}]"#.utf8))?.rejectionCode == "bad_payload")
        await #expect(try submit("r-3", Array(#"[{"custom_id":"a","prompt":"\udc00"}]"#.utf8))?.rejectionCode == "bad_payload")
        await #expect(try submit("r-4", Array(#"[{"custom_id":"a","prompt":"\ud83d\ude00 ok é"}]"#.utf8))?.isAccepted == true)
        await #expect(try submit("r-5", Array(Self.payload.utf8), count: 3)?.rejectionCode == "bad_payload")
        await #expect(try submit("r-6", Array(Self.payload.utf8), count: 0)?.isAccepted == true)
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        await #expect(try submit("r-7", Array(deep.utf8))?.rejectionCode == "bad_payload")

        let worker = try startWorker(broker.backend, in: dir, name: "w")
        try await worker.waitForLog("registered with broker")
        var outcomes = Set<String>()
        while !outcomes.isSuperset(of: ["r-4", "r-6"]) {
            outcomes.formUnion(try producer.receive(until: \.isOutcome).compactMap(\.outcomeID))
        }
        // CANCEL of a finished, un-ACKed batch: too late; its outcome again.
        try producer.send(.cancel(batchID: "r-6"))
        let cancelReply = try producer.sync()
        #expect(cancelReply.compactMap(\.outcomeID) == ["r-6"], "\(cancelReply)")
        #expect(cancelReply.contains { $0.isResult }, "\(cancelReply)")
        // ACKs: of r-6 (silent), again (unknown now), of an id never seen.
        try producer.send(.ack(batchID: "r-6"))
        try producer.send(.ack(batchID: "r-6"))
        try producer.send(.ack(batchID: "never-was"))
        let acks = try producer.sync()
        #expect(acks.compactMap(\.rejectionCode) == ["unknown_batch", "unknown_batch"], "\(acks)")
    }

    @Test("20,000 HELLOs with new sessions from one connection leave one session; STATUS stays small")
    func helloFloodBounded() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let flood = try context.dealer(broker.frontend)
        let count = 20_000
        for i in 0..<count { try flood.socket.send(ProducerRequest.hello(session: "flood-\(i)").encode()) }
        let client = try testClient(broker.frontend)
        defer { client.close() }
        // The flood is read before the client's STATUS only eventually: wait until all are in.
        var last = 0
        try await eventually("the broker to read the flood", timeout: 60) {
            let raw = try await client.status()
            last = raw.count
            let s = try JSONDecoder().decode(BrokerStatus.self, from: Data(raw))
            return s.scheduler.sessions.contains { $0.session == "flood-\(count - 1)" }
        }
        let s = try await status(client)
        #expect((s.scheduler.sessionsTotal ?? .max) <= 3, "\(s.scheduler.sessions.count) sessions")
        #expect(last < 16_384, "STATUS is \(last) bytes")
    }
}

extension ZMQContext {
    /// A raw DEALER with a large send queue, for floods.
    func dealer(_ endpoint: String) throws -> RawDealer {
        let s = try socket(.dealer)
        try s.set([.linger(milliseconds: 0), .sendHighWaterMark(1_000_000), .receiveHighWaterMark(1_000_000)])
        try s.connect(endpoint)
        return RawDealer(socket: s)
    }
}
