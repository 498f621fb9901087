import CompassProtocol
import Testing
@testable import CompassScheduler

/// Placement by affinity key (`Scheduler+Affinity.swift`): a key's batches go to the worker the key
/// ranks highest while it can take them, move when it cannot or leaves, and never change which
/// batch goes next, whether a batch is placed, or what a worker may hold.
@Suite("Placement by affinity key")
struct AffinityTests {
    /// Workers of the harness are identified by their names (the harness's process is the name).
    static func ranking(_ key: UInt64, _ workers: [String]) -> [String] {
        AffinityPlacement.ranking(key: key, identities: workers)
    }

    /// The worker each of `ids` was dispatched to (first dispatch).
    static func placement(_ log: [SchedulerAction<[UInt8]>]) -> [String: String] {
        var out: [String: String] = [:]
        for d in log.dispatches where out[d.id] == nil { out[d.id] = d.worker }
        return out
    }

    @Test("A key's batches land on its first worker while it has credit, then on its second, and come back with credit")
    func keyedBatchesFollowTheKeysRanking() {
        var h = Harness { $0.affinityLoadFactor = 1_000 } // the load bound out of the way: credit alone decides
        let workers = ["w0", "w1", "w2"]
        for w in workers { h.ready(w, credit: 3) }
        let key: UInt64 = 0xfeed
        let rank = Self.ranking(key, workers)
        for i in 0..<5 { h.submit("k\(i)", affinity: key) }
        let placed = Self.placement(h.log)
        #expect((0..<3).map { placed["k\($0)"] } == [rank[0], rank[0], rank[0]])
        #expect((3..<5).map { placed["k\($0)"] } == [rank[1], rank[1]])
        // The first worker answers one: it has credit again, and the key's next batch goes back to it.
        h.result(rank[0], "k0")
        h.submit("k5", affinity: key)
        #expect(Self.placement(h.log)["k5"] == rank[0])
        #expect(h.scheduler.snapshot(now: h.now).pools.first { $0.name == "p" }?.counters.affinityPlaced == 6)
    }

    @Test("Two keys on two workers: each key's batches all run on one worker, each answered exactly once")
    func eachKeyStaysOnOneWorker() {
        var h = Harness()
        h.ready("a", credit: 4)
        h.ready("b", credit: 4)
        // Two keys that prefer different workers.
        func key(preferring w: String) -> UInt64 { (UInt64(1)...).first { Self.ranking($0, ["a", "b"])[0] == w }! }
        let keys = [key(preferring: "a"), key(preferring: "b")]
        for round in 0..<10 {
            for (k, key) in keys.enumerated() { h.submit("r\(round)-k\(k)", from: "prod\(k)", affinity: key) }
            for d in h.log.dispatches where h.scheduler.batches[d.id]?.isFinished == false {
                h.result(d.worker, d.id, attempt: d.attempt)
            }
        }
        let placed = Self.placement(h.log)
        #expect(placed.count == 20)
        #expect(Set(placed.filter { $0.key.hasSuffix("k0") }.values) == ["a"])
        #expect(Set(placed.filter { $0.key.hasSuffix("k1") }.values) == ["b"])
        var answers: [String: Int] = [:]
        for r in h.log.results { answers[r.id, default: 0] += 1 }
        #expect(answers.count == 20 && answers.values.allSatisfy { $0 == 1 })
    }

    @Test("When a key's worker leaves, its batches move to the key's second choice; other keys stay where they were")
    func keysMoveOnlyWhenTheirWorkerLeaves() {
        var h = Harness()
        let workers = ["w0", "w1", "w2", "w3"]
        for w in workers { h.ready(w, credit: 1) }
        let keys = (1...40).map { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 }
        // One batch at a time: every worker idle, so each goes to its key's first choice.
        func place(_ tag: String) -> [UInt64: String] {
            var out: [UInt64: String] = [:]
            for key in keys {
                let out1 = h.submit("\(tag)-\(key)", affinity: key)
                let d = out1.dispatches.first!
                out[key] = d.worker
                h.result(d.worker, d.id, attempt: d.attempt)
            }
            return out
        }
        let before = place("before")
        for key in keys { #expect(before[key] == Self.ranking(key, workers)[0]) }
        #expect(Set(before.values).count == 4, "40 keys spread over all four workers")
        // w1 holds a batch of one of its keys when it is lost: that batch moves too.
        let leaving = "w1"
        let itsKey = keys.first { before[$0] == leaving }!
        h.submit("held", affinity: itsKey)
        #expect(Self.placement(h.log)["held"] == leaving)
        let lost = h.record(h.scheduler.workerUnreachable(PeerID(leaving), now: h.now))
        #expect(lost.dispatches.map(\.worker) == [Self.ranking(itsKey, workers)[1]])
        h.result(lost.dispatches[0].worker, "held", attempt: 2)
        let after = place("after")
        for key in keys {
            if before[key] == leaving {
                #expect(after[key] == Self.ranking(key, workers)[1])
            } else {
                #expect(after[key] == before[key], "key \(key) moved although its worker stayed")
            }
        }
        // A new worker takes exactly the keys it now ranks first.
        h.ready("w4", credit: 1)
        let joined = place("joined")
        let now = ["w0", "w2", "w3", "w4"]
        for key in keys { #expect(joined[key] == Self.ranking(key, now)[0]) }
        for key in keys where joined[key] != "w4" { #expect(joined[key] == after[key]) }
        #expect(h.log.failures.isEmpty)
    }

    @Test("A hot key spills to other workers once its worker runs more than its share: no worker idles while a batch waits in another")
    func loadIsBounded() {
        var h = Harness()
        for w in ["w0", "w1", "w2"] { h.ready(w, credit: 20) }
        for i in 0..<30 { h.submit("k\(i)", affinity: 7) }
        var counts: [String: Int] = [:]
        for d in h.log.dispatches { counts[d.worker, default: 0] += 1 }
        #expect(counts.values.reduce(0, +) == 30)
        #expect(counts.count == 3)
        // Never more than 1.25 × the mean (10), rounded up.
        #expect(counts.values.allSatisfy { $0 <= 13 }, "\(counts)")
    }

    @Test("Affinity picks the worker, never the batch: sessions still take turns, and a queued batch is placed as soon as any worker has credit")
    func fairnessAndNoWaiting() {
        var h = Harness()
        h.ready("w0", credit: 0)
        h.ready("w1", credit: 0)
        // Session A floods with one key, B sends a few with another.
        for i in 0..<6 { h.submit("a\(i)", from: "prodA", affinity: 1) }
        for i in 0..<3 { h.submit("b\(i)", from: "prodB", affinity: 2) }
        #expect(h.log.dispatches.isEmpty)
        // One credit at a time, on whichever worker: the order is the sessions' round robin, and
        // every credit places a batch at once, whatever its key prefers.
        var order: [String] = []
        for i in 0..<9 {
            let w = i % 2 == 0 ? "w0" : "w1"
            let out = h.credit(w, 1)
            #expect(out.dispatches.count == 1)
            #expect(out.dispatches.first?.worker == w)
            order += out.dispatches.map(\.id)
        }
        #expect(order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4", "a5"])
    }

    @Test("A draining worker is never a key's choice; batches without a key keep the round robin; factor 0 turns placement off")
    func drainingUnkeyedAndOff() {
        var h = Harness { $0.affinityLoadFactor = 1_000 }
        h.ready("w0", credit: 5)
        h.ready("w1", credit: 5)
        let key: UInt64 = 42
        let first = Self.ranking(key, ["w0", "w1"])[0], second = Self.ranking(key, ["w0", "w1"])[1]
        h.record(h.scheduler.workerBye(PeerID(first), reason: "drain", now: h.now))
        h.submit("k0", affinity: key)
        #expect(Self.placement(h.log)["k0"] == second)

        var plain = Harness()
        plain.ready("w0", credit: 2)
        plain.ready("w1", credit: 2)
        for i in 0..<4 { plain.submit("b\(i)") }
        #expect(plain.log.dispatches.map(\.worker) == ["w0", "w1", "w0", "w1"])

        var off = Harness { $0.affinityLoadFactor = 0 }
        off.ready("w0", credit: 2)
        off.ready("w1", credit: 2)
        for i in 0..<4 { off.submit("b\(i)", affinity: 9) }
        #expect(off.log.dispatches.map(\.worker) == ["w0", "w1", "w0", "w1"])
        #expect(off.scheduler.snapshot(now: off.now).pools.first?.counters.affinityPlaced == 0)
    }

    @Test("The key travels in the meta: BATCH carries it, a split half keeps it, and the journal keeps it")
    func keyTravels() {
        let meta = BatchMeta(requestCount: 2, priority: -3, affinity: 0x0102_0304_0506_0708)
        #expect(meta.bytes.count == 24)
        #expect(Array(meta.bytes.suffix(8)) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(meta.bytes.withUnsafeBytes { BatchMeta(bytes: $0) } == meta)
        #expect(BatchMeta(requestCount: 2).bytes.count == 16, "a meta without a key is what it always was")
        var h = Harness()
        h.ready("w0", credit: 1)
        h.submit("b", affinity: 77)
        let sent = h.log.compactMap { if case .toWorker(_, .batch(_, _, let m, _)) = $0 { return m.affinity }; return nil }
        #expect(sent == [77])
    }
}
