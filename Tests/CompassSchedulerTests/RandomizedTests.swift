import CompassProtocol
import Testing
@testable import CompassScheduler


@Suite("Randomized: exactly-once under worker churn")
struct RandomizedTests {
    /// `keyed`: batches carry one of a few affinity keys (or none), so placement by key runs
    /// through the same churn and must keep every guarantee; unkeyed runs replay the seeds as before.
    @Test(arguments: [1, 2, 3, 42, 1234, 99999] as [UInt64], [false, true])
    func everyBatchIsAnsweredExactlyOnce(seed: UInt64, keyed: Bool) {
        var rng = SplitMix64(state: seed)
        var h = Harness { $0.defaultMaxAttempts = 50; $0.leaseMilliseconds = 2_000 }
        let batchCount = 200
        var submitted = 0
        var nextWorker = 0
        var alive: [String] = []
        var paused: Set<String> = []
        // What each worker currently holds: (batch, attempt).
        var holding: [String: [(String, UInt32)]] = [:]
        // The credit each worker declared: it may never hold more than that.
        var declared: [String: Int] = [:]
        // Three producers with sessions; a thief that never says HELLO and a rival session try to
        // collect, acknowledge or cancel their batches by id.
        for i in 0..<3 { h.record(h.scheduler.hello(from: PeerID("prod\(i)"), session: "sess\(i)", now: h.now)) }
        h.record(h.scheduler.hello(from: PeerID("rival"), session: "rival-session", now: h.now))
        func checkCredit() {
            for (w, limit) in declared {
                guard let record = h.scheduler.workers[PeerID(w)] else { continue }
                #expect(record.credit + record.owed.count <= limit, "seed \(seed): \(w) holds \(record.owed.count) with credit \(record.credit), declared \(limit)")
            }
        }

        func absorb(_ actions: [SchedulerAction<[UInt8]>]) {
            for case .toWorker(let w, .batch(let id, let attempt, _, _)) in actions {
                holding[w.description, default: []].append((id, attempt))
            }
        }
        var steps = 0
        while steps < 20_000 {
            steps += 1
            let roll = Int.random(in: 0..<100, using: &rng)
            switch roll {
            case 0..<15 where submitted < batchCount:
                let key = keyed ? UInt64.random(in: 0..<5, using: &rng) : 0
                absorb(h.submit("b\(submitted)", from: "prod\(submitted % 3)", affinity: key))
                submitted += 1
            case 15..<22 where alive.count < 6:
                let w = "w\(nextWorker)"; nextWorker += 1
                alive.append(w)
                let credit = Int.random(in: 1...3, using: &rng)
                declared[w] = credit
                absorb(h.ready(w, credit: credit))
            case 22..<25 where !alive.isEmpty:
                // SIGKILL: the worker vanishes with what it holds.
                let w = alive.remove(at: Int.random(in: 0..<alive.count, using: &rng))
                holding[w] = nil
                paused.remove(w)
                if Bool.random(using: &rng) { absorb(h.record(h.scheduler.workerUnreachable(PeerID(w), now: h.now))) }
            case 25..<28 where !alive.isEmpty:
                // SIGSTOP / SIGCONT
                let w = alive[Int.random(in: 0..<alive.count, using: &rng)]
                if paused.contains(w) { paused.remove(w) } else { paused.insert(w) }
            case 28..<70:
                let busy = alive.filter { !paused.contains($0) && !(holding[$0] ?? []).isEmpty }
                guard let w = busy.randomElement(using: &rng) else { break }
                let (id, attempt) = holding[w]!.removeFirst()
                if Int.random(in: 0..<10, using: &rng) == 0 {
                    absorb(h.failed(w, id, attempt: attempt, code: .engineDead, retryable: true))
                } else {
                    absorb(h.result(w, id, attempt: attempt))
                }
            case 70..<74 where submitted > 0:
                let id = "b\(Int.random(in: 0..<submitted, using: &rng))"
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: absorb(h.submit(id, from: "thief"))
                case 1: absorb(h.record(h.scheduler.ack(from: PeerID("thief"), batchID: id, now: h.now)))
                case 2: absorb(h.record(h.scheduler.cancel(from: PeerID("thief"), batchID: id, now: h.now)))
                default: absorb(h.submit(id, from: "rival"))
                }
            case 74..<77 where !alive.isEmpty:
                // A stray answer: a RESULT naming any batch and attempt, sent to it or not.
                let w = alive[Int.random(in: 0..<alive.count, using: &rng)]
                let id = "b\(Int.random(in: 0..<max(1, submitted), using: &rng))"
                absorb(h.result(w, id, attempt: UInt32.random(in: 1...3, using: &rng)))
                checkCredit()
            default:
                absorb(h.advance(UInt64.random(in: 1...60, using: &rng)))
                for w in alive where !paused.contains(w) {
                    absorb(h.record(h.scheduler.workerHeartbeat(PeerID(w), now: h.now)))
                }
            }
            if submitted == batchCount && h.scheduler.unfinishedCount == 0 { break }
            // Keep at least one live worker around so the run can finish.
            if alive.filter({ !paused.contains($0) }).isEmpty {
                let w = "w\(nextWorker)"; nextWorker += 1
                alive.append(w)
                declared[w] = 2
                absorb(h.ready(w, credit: 2))
            }
        }
        checkCredit()
        let routes = Set(h.log.compactMap { action -> String? in
            switch action {
            case .toProducer(let route, .result), .toProducer(let route, .failed): route.description
            default: nil
            }
        })
        #expect(routes.isSubset(of: ["prod0", "prod1", "prod2"]), "seed \(seed): outcomes went to \(routes)")
        #expect(submitted == batchCount, "seed \(seed)")
        #expect(h.scheduler.unfinishedCount == 0, "seed \(seed): \(h.scheduler.unfinishedCount) batches unfinished after \(steps) steps")
        var answers: [String: Int] = [:]
        for r in h.log.results { answers[r.id, default: 0] += 1 }
        for f in h.log.failures { answers[f.id, default: 0] += 1 }
        #expect(answers.count == batchCount, "seed \(seed)")
        #expect(answers.values.allSatisfy { $0 == 1 }, "seed \(seed): duplicates \(answers.filter { $0.value > 1 })")
        #expect(h.log.failures.isEmpty, "seed \(seed): \(h.log.failures)")
    }
}
