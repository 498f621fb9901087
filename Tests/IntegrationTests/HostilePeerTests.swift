import CompassClient
import CompassProtocol
import CompassWire
import Foundation
import Testing
import ZMQ

#if canImport(Glibc)
import Glibc
#endif

@Suite("Hostile and careless peers against the real broker", .serialized, .timeLimit(.minutes(3)))
struct HostilePeerTests {
    static let payload = #"[{"custom_id":"a","prompt":"a private prompt"}]"#

    @Test("A connection without HELLO re-submitting a connected session's batch id gets session_required, never its RESULT; its ACK and CANCEL change nothing")
    func noResultTheft() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let worker = try startWorker(broker.backend, in: dir, name: "w")
        try await worker.waitForLog("registered with broker")
        let context = try ZMQContext()
        let owner = try RawProducer(context, broker.frontend)
        try owner.send(.hello(session: "owner-session"))
        _ = try owner.receive(until: \.isWelcome)
        try owner.submit("owner-session-1", Self.payload)
        #expect(try owner.receive(until: \.isResult).compactMap(\.outcomeID) == ["owner-session-1"])

        // The owner is still connected and has not ACKed. A thief guesses the id (and even the payload).
        let thief = try RawProducer(context, broker.frontend)
        try thief.submit("owner-session-1", Self.payload)
        try thief.send(.ack(batchID: "owner-session-1"))
        try thief.send(.cancel(batchID: "owner-session-1"))
        let told = try thief.sync()
        #expect(told.compactMap(\.rejectionCode) == ["session_required", "unknown_batch", "unknown_batch"])
        #expect(told.allSatisfy { !$0.isOutcome && !$0.isAccepted }, "\(told)")

        // The owner's result is still held for it: a new connection of the session collects it once.
        let back = try RawProducer(context, broker.frontend)
        try back.send(.hello(session: "owner-session"))
        let replay = try back.receive(until: \.isResult)
        guard case .welcome(_, let info) = replay.first else { Issue.record("no WELCOME first: \(replay)"); return }
        let welcome = try JSONDecoder().decode(ProducerWelcome.self, from: Data(info.bytes))
        #expect(welcome.pendingResults == 1)
        #expect(replay.compactMap(\.outcomeID) == ["owner-session-1"])
        try back.send(.ack(batchID: "owner-session-1"))
        _ = try back.sync()
        // Acknowledged by its owner: now the id is spent for everyone.
        try thief.submit("owner-session-1", Self.payload)
        #expect(try thief.sync().compactMap(\.rejectionCode) == ["duplicate"])
    }

    @Test("A HELLO naming another connection's anonymous session (anon: and its routing id) is refused bad_frame; the result still goes to that connection")
    func noAnonymousSessionHijack() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        // No HELLO: its session is `anon:` and its routing id, which a thief can guess. No worker yet: the batch waits.
        let victim = try RawProducer(context, broker.frontend, id: "victim-conn")
        try victim.submit("v-1", Self.payload)
        #expect(try victim.receive(until: \.isAccepted).last?.isAccepted == true)
        let thief = try RawProducer(context, broker.frontend)
        try thief.send(.hello(session: "anon:victim-conn"))
        let told = try thief.sync()
        #expect(told.compactMap(\.rejectionCode) == ["bad_frame"], "\(told)")
        #expect(!told.contains { $0.isWelcome }, "\(told)")
        let worker = try startWorker(broker.backend, in: dir, name: "w")
        try await worker.waitForLog("registered with broker")
        #expect(try victim.receive(until: \.isOutcome).compactMap(\.outcomeID) == ["v-1"])
        #expect(try thief.sync().allSatisfy { !$0.isOutcome })
    }

    @Test("A batch id with '~' (the broker names the halves of a split batch with it) is refused bad_frame at SUBMIT")
    func splitSeparatorInBatchIDIsRefused() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let producer = try RawProducer(context, broker.frontend)
        try producer.send(.hello(session: "s-tilde"))
        _ = try producer.receive(until: \.isWelcome)
        try producer.submit("s-tilde~0", Self.payload)
        let told = try producer.sync()
        #expect(told.compactMap(\.rejectionCode) == ["bad_frame"], "\(told)")
        #expect(!told.contains { $0.isAccepted })
    }

    @Test("After a broker restart, a reconnected socket's queued re-SUBMIT (before its HELLO) is refused, then accepted after HELLO and delivered once")
    func queuedResubmitAfterRestartNeedsHello() async throws {
        let dir = TempDir()
        let fe = "ipc://\(dir.path)/fe", be = "ipc://\(dir.path)/be"
        let journal = ["--journal", dir.file("journal.db")]
        var broker = try await BrokerProcess(in: dir, name: "broker1", frontend: fe, backend: be, arguments: journal)
        let context = try ZMQContext()
        // No worker yet: the batch is queued and journaled.
        let producer = try RawProducer(context, fe, id: "producer-conn-1")
        try producer.send(.hello(session: "s-restart"))
        _ = try producer.receive(until: \.isWelcome)
        try producer.submit("s-restart-1", Self.payload)
        _ = try producer.receive(until: \.isAccepted)
        broker.process.child.signal(SIGKILL)
        _ = try await broker.process.waitForExit(timeout: 5)
        try producer.waitForDisconnect()
        // Sent while the broker is away: libzmq keeps it and delivers it first on reconnect.
        try producer.submit("s-restart-1", Self.payload)
        broker = try await BrokerProcess(in: dir, name: "broker2", frontend: fe, backend: be, arguments: journal)
        let early = try producer.receive(until: { $0.rejectionCode != nil || $0.isAccepted })
        #expect(early.last?.rejectionCode == "session_required", "\(early)")
        // The honest producer says HELLO and re-submits; then a worker comes.
        try producer.send(.hello(session: "s-restart"))
        try producer.submit("s-restart-1", Self.payload)
        #expect(try producer.receive(until: { $0.rejectionCode != nil || $0.isAccepted }).last?.isAccepted == true)
        let worker = try startWorker(be, in: dir, name: "w")
        try await worker.waitForLog("registered with broker")
        let outcome = try producer.receive(until: \.isOutcome)
        #expect(outcome.last?.isResult == true)
        try producer.send(.ack(batchID: "s-restart-1"))
        #expect(try producer.sync().filter(\.isOutcome).isEmpty)
    }

    @Test("A worker answering every batch with handed_back without BYE: FAILED after max_attempts dispatches, no endless re-dispatch")
    func handedBackWithoutByeEnds() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let worker = try RawWorker(context, broker.backend)
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let submit = Task {
            try await client.submit([InferenceRequest(customID: "h", prompt: "handed back")], pool: "default", batchID: "hb", maxAttempts: 3)
        }
        // The worker: heartbeats, and hands back whatever it is given, until the producer has an answer.
        var dispatches = 0
        var lastHeartbeat = Date.distantPast
        let deadline = Date().addingTimeInterval(20)
        while dispatches < 100, Date() < deadline {
            if Date().timeIntervalSince(lastHeartbeat) > 0.05 {
                try worker.send(.heartbeat(stats: Frame(bytes: [UInt8]())))
                lastHeartbeat = Date()
            }
            guard let message = try worker.next() else {
                if dispatches >= 3, try await status(client).scheduler.pools.first(where: { $0.name == "default" })?.counters.failed == 1 { break }
                continue
            }
            if case .batch(let id, let attempt, _, _) = message {
                dispatches += 1
                try worker.send(.failed(batchID: id, attempt: attempt, code: "handed_back", retryable: true,
                                        message: "not started", partial: Frame(bytes: [UInt8]())))
            }
        }
        if dispatches >= 100 { submit.cancel() }  // the broker loops: end the test, not the suite
        let outcome = try await submit.value
        #expect(dispatches == 3)
        guard case .failed(let code, let message, _) = outcome.status else { Issue.record("not failed: \(outcome)"); return }
        #expect(code == "handed_back")
        #expect(message.contains("not draining"))
        #expect(outcome.attempts == 3)
        let counters = try #require(try await status(client).scheduler.pools.first { $0.name == "default" }?.counters)
        #expect(counters.dispatched == 3)
    }

    @Test("A worker's bogus RESULTs (batches never sent to it, a repeated answer) win it no credit; READY with negative credit is refused")
    func noCreditInflation() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let producer = try RawProducer(context, broker.frontend)
        try producer.send(.hello(session: "s-credit"))
        for i in 0..<6 { try producer.submit("s-credit-\(i)", Self.payload) }
        #expect(try producer.sync().filter(\.isAccepted).count == 6)
        let greedy = try RawWorker(context, broker.backend, credit: 3)
        var batches: [(id: String, attempt: UInt32)] = []
        let deadline = Date().addingTimeInterval(20)
        while batches.count < 3, Date() < deadline {
            if case .batch(let id, let attempt, _, _)? = try greedy.next() { batches.append((id, attempt)) }
        }
        try #require(batches.count == 3)
        let empty = Frame(bytes: [UInt8]())
        // Answers for what it was never sent, five times over, and one real answer twice.
        for i in 0..<5 {
            try greedy.send(.result(batchID: "never-sent-\(i)", attempt: 1, stats: Frame(string: "{}"), payload: Frame(string: "[]")))
        }
        try greedy.send(.result(batchID: batches[0].id, attempt: batches[0].attempt, stats: Frame(string: "{}"), payload: Frame(string: #"[{"custom_id":"a"}]"#)))
        try greedy.send(.result(batchID: batches[0].id, attempt: batches[0].attempt, stats: Frame(string: "{}"), payload: Frame(string: #"[{"custom_id":"a"}]"#)))
        try greedy.send(.heartbeat(stats: empty))
        let client = try testClient(broker.frontend)
        defer { client.close() }
        // Once the broker has read all seven answers (six dropped as stale), count its dispatches.
        try await eventually("the broker to drop six stale answers") {
            try await status(client).scheduler.pools.first { $0.name == "default" }?.counters.staleDropped == 6
        }
        let s = try await status(client)
        let pool = try #require(s.scheduler.pools.first { $0.name == "default" })
        #expect(pool.counters.dispatched == 4, "one real answer, one more batch: \(pool.counters)")
        #expect(s.scheduler.workers.first?.running.count == 3)

        // A READY with negative credit is refused, with the reason.
        let negative = try context.socket(.dealer)
        try negative.set([.linger(milliseconds: 0), .receiveTimeout(milliseconds: 5000)])
        try negative.connect(broker.backend)
        let caps = WorkerCapabilities(pool: "default", tp: 1, gpus: [], model: "m", engine: "raw", maxBatch: 1, credit: -5,
                                      pid: 1, host: "h", version: "0")
        try negative.send(WorkerMessage.ready(capabilities: Frame(bytes: try JSONEncoder().encode(caps))).encode())
        let reply = try BrokerWorkerMessage.decode(try #require(try negative.receive())[...])
        guard case .disconnect(let reason) = reply else { Issue.record("expected DISCONNECT, got \(reply)"); return }
        #expect(reason.contains("credit"), "\(reason)")
    }

    @Test("The client answers session_required with HELLO and the same SUBMIT, and gets its outcome once")
    func clientSaysHelloOnSessionRequired() async throws {
        let dir = TempDir()
        let context = try ZMQContext()
        // A scripted broker: it refuses the first SUBMIT as a restarted broker refuses a SUBMIT that
        // a reconnected socket delivered before its HELLO.
        let fake = try context.socket(.router)
        try fake.set([.linger(milliseconds: 0), .receiveTimeout(milliseconds: 100)])
        try fake.bind("ipc://\(dir.path)/fake")
        let client = try CompassClient(options: ClientOptions(broker: "ipc://\(dir.path)/fake", session: "s-fake"))
        defer { client.close() }
        let submit = Task { try await client.submit(batchID: "s-fake-1", pool: "default", payload: Array(Self.payload.utf8)) }
        var route: [UInt8] = []
        /// The client's next message other than HEARTBEAT (answered on the way).
        func next() throws -> ProducerRequest {
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline {
                guard let frames = try receiveOrTimeout(fake) else { continue }
                route = frames[0].bytes
                let request = try ProducerRequest.decode(frames[1...])
                if case .heartbeat = request {
                    try fake.send([Frame(bytes: route)] + ProducerReply.heartbeat(brokerID: "fake").encode())
                    continue
                }
                return request
            }
            throw HarnessError("the client sent nothing within 20 s")
        }
        func reply(_ message: ProducerReply) throws { try fake.send([Frame(bytes: route)] + message.encode()) }
        func describe(_ r: ProducerRequest) -> String {
            switch r {
            case .hello(let session): "HELLO \(session)"
            case .submit(let id, _, _, _): "SUBMIT \(id)"
            case .ack(let id): "ACK \(id)"
            case .cancel(let id): "CANCEL \(id)"
            case .status: "STATUS"
            case .heartbeat: "HEARTBEAT"
            }
        }
        #expect(describe(try next()) == "HELLO s-fake")
        #expect(describe(try next()) == "SUBMIT s-fake-1")
        try reply(.rejected(batchID: "s-fake-1", code: "session_required", message: "say HELLO first", retryAfterMilliseconds: 0))
        #expect(describe(try next()) == "HELLO s-fake")
        #expect(describe(try next()) == "SUBMIT s-fake-1")
        try reply(.accepted(batchID: "s-fake-1"))
        try reply(.result(batchID: "s-fake-1", attempts: 1, stats: Frame(string: "{}"), payload: Frame(string: "[]")))
        let outcome = try await submit.value
        guard case .completed = outcome.status else { Issue.record("not completed: \(outcome)"); return }
        #expect(describe(try next()) == "ACK s-fake-1")
    }

    @Test("compass submit to a pool no worker has joined yet waits (saying so) and completes when one registers; --wait-for-pool 0 fails at once")
    func submitWaitsForItsPool() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let expected = try writePrompts(dir.file("in.jsonl"), count: 20)
        let run = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--pool", "late",
                                          "--batch-size", "4", "--wait-for-pool", "60", "--out", dir.file("out.jsonl"), "--quiet"],
                              in: dir, name: "submit")
        try await run.waitForLog("waiting up to 60 s for a worker of pool 'late'")
        let worker = try startWorker(broker.backend, in: dir, name: "w", pool: "late")
        try await worker.waitForLog("registered with broker")
        #expect(try await run.waitForExit(timeout: 60).isSuccess, "\(run.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])

        let impatient = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--pool", "nobody",
                                                "--wait-for-pool", "0", "--out", dir.file("none.jsonl"), "--quiet"], in: dir, name: "impatient")
        #expect(try await impatient.waitForExit(timeout: 30) == .exited(1))
        #expect(impatient.log().contains("no worker has joined pool 'nobody'"), "\(impatient.log())")
        #expect(impatient.log().contains("known pools: default, late"), "\(impatient.log())")
    }
}
