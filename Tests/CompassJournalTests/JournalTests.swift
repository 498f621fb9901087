@testable import CompassJournal
import CompassProtocol
import CompassScheduler
import Foundation
import Testing

@Suite("Journal")
struct JournalTests {
    let dir: String = {
        let d = NSTemporaryDirectory() + "journal-test-" + UUID().uuidString.prefix(8)
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    func snapshot(_ id: String, requests: String = #"[{"custom_id":"a","prompt":"x"}]"#) -> BatchSnapshot<[UInt8]> {
        BatchSnapshot(id: id, session: .named("s"), pool: "p", meta: BatchMeta(requestCount: 1, priority: 2), maxAttempts: 3, payload: bytes(requests))
    }

    @Test func recordsRoundTrip() throws {
        let journal = try Journal(path: "\(dir)/j.db")
        try journal.commit([JournalOperation<[UInt8]>.accepted(snapshot("a")), .accepted(snapshot("b")), .accepted(snapshot("c")),
                            .attempt(batchID: "a", attempt: 2, charged: 2, kills: 1)])
        try journal.commit([JournalOperation<[UInt8]>.finished(batchID: "b", outcome: .result(stats: bytes("{}"), payload: bytes("[1]"))),
                            .finished(batchID: "c", outcome: .failed(code: AnyFailureCode(.oom), message: "too big", partial: nil))])
        let loaded: [BatchSnapshot<[UInt8]>] = try Journal(path: "\(dir)/j.db").load()
        #expect(loaded.map(\.id) == ["a", "b", "c"])
        #expect(loaded[0].attempt == 2 && loaded[0].charged == 2 && loaded[0].kills == 1 && loaded[0].outcome == nil)
        #expect(loaded[0].meta == BatchMeta(requestCount: 1, priority: 2))
        #expect(loaded[0].payload == bytes(#"[{"custom_id":"a","prompt":"x"}]"#))
        guard case .result(_, let payload) = loaded[1].outcome else { Issue.record("b not finished"); return }
        #expect(payload == bytes("[1]"))
        guard case .failed(let code, let message, _) = loaded[2].outcome else { Issue.record("c not failed"); return }
        #expect(code == "oom" && message == "too big")
        try journal.commit([JournalOperation<[UInt8]>.removed(batchID: "b")])
        #expect(try (journal.load() as [BatchSnapshot<[UInt8]>]).map(\.id) == ["a", "c"])
    }

    @Test func corruptFileIsRefusedWithAHint() throws {
        let path = "\(dir)/corrupt.db"
        try Data(repeating: 0x42, count: 8192).write(to: URL(fileURLWithPath: path))
        do {
            _ = try Journal(path: path)
            Issue.record("a corrupt journal was accepted")
        } catch let error as JournalError {
            #expect(error.message.contains(path))
            #expect(error.message.contains("corrupt"))
        }
    }

    @Test func unwritablePlacesAreRefused() throws {
        #expect(throws: JournalError.self) { try Journal(path: "\(dir)/no/such/dir/j.db") }
        let locked = "\(dir)/locked"
        try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: true)
        try FileManager.default.setAttributes([.posixPermissions: 0o500], ofItemAtPath: locked)
        defer { try? FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: locked) }
        if getuid() != 0 { // root ignores directory permissions
            #expect(throws: JournalError.self) { try Journal(path: "\(locked)/j.db") }
        }
    }

    @Test func deadLetterExportHasTheFailedRequests() throws {
        let journal = try Journal(path: "\(dir)/dl.db")
        let two = #"[{"custom_id":"ok","prompt":"x"},{"custom_id":"bad","prompt":"y"}]"#
        try journal.commit([JournalOperation<[UInt8]>.accepted(snapshot("r", requests: two)), .accepted(snapshot("f")), .accepted(snapshot("q"))])
        let results = #"[{"custom_id":"ok","error":null},{"custom_id":"bad","error":{"code":"bad_request","message":"m"}}]"#
        try journal.commit([JournalOperation<[UInt8]>.finished(batchID: "r", outcome: .result(stats: bytes("{}"), payload: bytes(results))),
                            .finished(batchID: "f", outcome: .failed(code: AnyFailureCode(.engineDead), message: "x", partial: nil))])
        #expect(try journal.exportFailed(to: "\(dir)/dead.jsonl") == 2)
        let lines = try String(contentsOfFile: "\(dir)/dead.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines == [#"{"custom_id":"bad","prompt":"y"}"#, #"{"custom_id":"a","prompt":"x"}"#])
        let stats = try journal.stats()
        #expect(stats.pools.first?.results == 1 && stats.pools.first?.failed == 1 && stats.pools.first?.queued == 1)
    }
}

@Suite("Scheduler recovery from a journal")
struct RecoveryTests {
    func config() -> SchedulerConfig {
        var c = SchedulerConfig()
        c.journaling = true
        c.heartbeatMilliseconds = 100
        return c
    }

    @Test func journalingEmitsTheRecordsOfABatchsLife() {
        var s = Scheduler<[UInt8]>(config: config(), format: JSONPayloadFormat())
        let now = Timestamp.milliseconds(1000)
        var ops: [String] = []
        func note(_ actions: [SchedulerAction<[UInt8]>]) {
            for case .journal(let op) in actions {
                switch op {
                case .accepted(let b): ops.append("accepted \(b.id)")
                case .attempt(let id, let attempt, _, _): ops.append("attempt \(id) \(attempt)")
                case .finished(let id, _): ops.append("finished \(id)")
                case .removed(let id): ops.append("removed \(id)")
                case .rebound(let id, let session): ops.append("rebound \(id) \(session)")
                }
            }
        }
        note(s.workerReady(PeerID("w"), pool: "p", credit: 1, now: now))
        note(s.submit(from: PeerID("prod"), batchID: "b", pool: "p", meta: BatchMeta(requestCount: 1), payload: Array("[1]".utf8), now: now))
        note(s.workerResult(PeerID("w"), batchID: "b", attempt: 1, stats: [], payload: [], now: now))
        note(s.ack(from: PeerID("prod"), batchID: "b", now: now))
        #expect(ops == ["accepted b", "attempt b 1", "finished b", "removed b"])
    }

    @Test func restoredBatchesRunAgainAndALateResultIsAcceptedOnce() {
        var s = Scheduler<[UInt8]>(config: config(), format: JSONPayloadFormat())
        let now = Timestamp.milliseconds(1000)
        s.restore([BatchSnapshot(id: "old", session: .named("sess"), pool: "p", meta: BatchMeta(requestCount: 1), maxAttempts: 3,
                                 payload: Array("[1]".utf8), attempt: 1, charged: 1),
                   BatchSnapshot(id: "done", session: .named("sess"), pool: "p", meta: BatchMeta(requestCount: 1), maxAttempts: 3,
                                 payload: Array("[1]".utf8), attempt: 1, charged: 1, outcome: .result(stats: [], payload: Array("[9]".utf8)))],
                  now: now)
        #expect(s.checkInvariants().isEmpty)
        let dispatched = s.workerReady(PeerID("w2"), pool: "p", credit: 1, now: now)
        #expect(dispatched.contains { if case .toWorker(_, .batch("old", 2, _, _)) = $0 { return true }; return false })
        // The worker of the previous incarnation delivers attempt 1 before it registered again.
        let late = s.workerResult(PeerID("w1"), batchID: "old", attempt: 1, stats: [], payload: Array("[1]".utf8), now: now)
        #expect(late.contains { if case .toWorker(let w, .cancel("old", 2)) = $0 { return w == PeerID("w2") }; return false })
        // The re-dispatched attempt's result is now a duplicate and changes nothing.
        let dup = s.workerResult(PeerID("w2"), batchID: "old", attempt: 2, stats: [], payload: [], now: now)
        #expect(!dup.contains { if case .event(.completed) = $0 { return true }; return false })
        let replay = s.hello(from: PeerID("prod2"), session: "sess", now: now)
        let delivered = replay.compactMap { a -> String? in if case .toProducer(_, .result(let id, _, _, _)) = a { return id }; return nil }
        #expect(delivered.sorted() == ["done", "old"])
        #expect(s.checkInvariants().isEmpty)
    }
}

/// Compares a code with its wire text, as the journal stores it.
func == (code: AnyFailureCode, text: String) -> Bool { code.rawValue == text }

@Suite("Journal: sessions as text")
struct JournalSessionTests {
    @Test("Sessions are stored as the text they always were, and a journal written that way replays")
    func sessionsKeepTheirText() throws {
        let dir = NSTemporaryDirectory() + "journal-session-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let journal = try Journal(path: "\(dir)/j.db")
        let route = PeerID([0x00, 0x80, 0x00, 0x00, 0x29])
        func accepted(_ id: String, _ session: SessionKey) -> JournalOperation<[UInt8]> {
            .accepted(BatchSnapshot(id: id, session: session, pool: "p", meta: BatchMeta(requestCount: 1), maxAttempts: 3, payload: [1]))
        }
        try journal.commit([accepted("a", .anonymous(route)), accepted("b", .named("sess")), accepted("c", .anonymous(PeerID("prod"))),
                            .rebound(batchID: "c", session: .named("later"))])
        // What an earlier broker wrote: the sessions' text, anonymous ones as `anon:` and the route.
        try journal.queue.write { db in
            try db.execute(sql: """
                INSERT INTO batch (id, session, pool, meta, max_attempts, payload, accepted_at)
                VALUES ('old', 'anon:0x0080000030', 'p', ?, 3, x'5b315d', 0)
                """, arguments: [Data(BatchMeta(requestCount: 1).bytes)])
        }
        let stored = try journal.queue.read { db in try String.fetchAll(db, sql: "SELECT session FROM batch ORDER BY rowid") }
        #expect(stored == ["anon:0x0080000029", "sess", "later", "anon:0x0080000030"])
        let loaded: [BatchSnapshot<[UInt8]>] = try journal.load()
        #expect(Dictionary(uniqueKeysWithValues: loaded.map { ($0.id, $0.session) })
                == ["a": .anonymous(route), "b": .named("sess"), "c": .named("later"), "old": .anonymous(PeerID([0x00, 0x80, 0x00, 0x00, 0x30]))])
    }
}
