import CompassProtocol
@testable import CompassScheduler
import Testing

/// Each session's share of a pool (a producer that never ACKs fills only its own), and what a
/// batch id means on a second SUBMIT (the same batch, or a refusal: never another batch's result).
struct SessionShareTests {
    @Test func aSessionThatNeverAcksFillsOnlyItsShare() {
        // Pool 400 bytes: a session's default share is a quarter, 100.
        var h = Harness { $0.maxPoolBytes = 400 }
        #expect(h.scheduler.config.sessionByteLimit == 100)
        h.ready("w", credit: 10)
        #expect(h.submit("d1", from: "deaf", bytes: 40).accepted == ["d1"])
        h.result("w", "d1")
        #expect(h.submit("d2", from: "deaf", bytes: 40).accepted == ["d2"])
        h.result("w", "d2")
        // 40 + 2 (result) + 40 + 2 held: one more 40-byte batch would pass the share.
        let refused = h.submit("d3", from: "deaf", bytes: 40)
        #expect(refused.rejections.map(\.code) == [.busy])
        #expect(refused.rejections.first!.retryAfter > 0)
        #expect(h.scheduler.snapshot(now: h.now).pools.first!.counters.rejectedBusy == 1)
        // Every other session still submits: the pool holds 84 of its 400 bytes.
        for i in 0..<2 { #expect(h.submit("o\(i)", from: "other", bytes: 40).accepted == ["o\(i)"]) }
        #expect(h.submit("x0", from: "third", bytes: 40).accepted == ["x0"])
        // The deaf session stays refused until it ACKs; then it has room again.
        #expect(h.submit("d3", from: "deaf", bytes: 40).rejections.map(\.code) == [.busy])
        h.ack("d1", from: "deaf")
        #expect(h.submit("d3", from: "deaf", bytes: 40).accepted == ["d3"])
    }

    @Test func resultRetentionFreesTheShare() {
        var h = Harness { $0.maxPoolBytes = 400; $0.resultRetentionMilliseconds = 1000 }
        h.ready("w", credit: 10)
        h.submit("d1", from: "deaf", bytes: 90)
        h.result("w", "d1")
        #expect(h.submit("d2", from: "deaf", bytes: 20).rejections.map(\.code) == [.busy])
        h.advance(1500)
        #expect(h.submit("d2", from: "deaf", bytes: 20).accepted == ["d2"])
    }

    @Test func aSessionHoldingNothingMaySubmitOneBatchOverItsShare() {
        // A payload over the share but within the pool still runs, one at a time.
        var h = Harness { $0.maxPoolBytes = 400 }
        #expect(h.submit("big1", bytes: 300).accepted == ["big1"])
        #expect(h.submit("big2", bytes: 300).rejections.map(\.code) == [.busy])
        #expect(h.submit("small", from: "other", bytes: 50).accepted == ["small"])
        #expect(h.submit("big3", bytes: 401).rejections.map(\.code) == [.tooLarge])
    }

    @Test func theShareIsConfigurableAndCountsEveryPool() {
        var h = Harness { $0.maxPoolBytes = 1000; $0.maxSessionBytes = 50; $0.declaredPools = ["p", "q"] }
        #expect(h.submit("a", pool: "p", bytes: 30).accepted == ["a"])
        #expect(h.submit("b", pool: "q", bytes: 30).rejections.map(\.code) == [.busy])
        #expect(h.submit("b", pool: "q", bytes: 20).accepted == ["b"])
    }

    @Test func aClaimedAnonymousBatchMovesItsBytesToTheSession() {
        var h = Harness { $0.maxPoolBytes = 400 }
        h.submit("a", from: "anon-socket", bytes: 80)
        h.record(h.scheduler.hello(from: PeerID("prod"), session: "s1", now: h.now))
        // The re-SUBMIT from the session's connection claims it (same pool, same bytes); the
        // invariants (checked by every step) hold the session's byte count to its batches'.
        #expect(h.submit("a", from: "prod", bytes: 80).accepted == ["a"])
        #expect(h.submit("b", from: "prod", bytes: 80).rejections.map(\.code) == [.busy])
    }

    @Test func aKnownIdWithAnotherPayloadIsRefusedNotAnsweredWithTheOldResult() {
        var h = Harness { $0.declaredPools = ["p", "q"] }
        h.submit("a", bytes: 10)
        #expect(h.submit("a", bytes: 10, fill: 2).rejections.map(\.code) == [.payloadMismatch])
        #expect(h.submit("a", bytes: 11).rejections.map(\.code) == [.payloadMismatch])
        #expect(h.submit("a", pool: "q", bytes: 10).rejections.map(\.code) == [.payloadMismatch])
        // The identical re-SUBMIT stays idempotent.
        #expect(h.submit("a", bytes: 10).accepted == ["a"])
        h.ready("w")
        h.result("w", "a")
        let mismatch = h.submit("a", bytes: 10, fill: 3)
        #expect(mismatch.rejections.map(\.code) == [.payloadMismatch])
        #expect(mismatch.results.isEmpty, "the old result must not answer other work")
        let same = h.submit("a", bytes: 10)
        #expect(same.accepted == ["a"] && same.results.map(\.id) == ["a"])
        #expect(h.scheduler.batchCount == 1)
    }

    @Test func anAcknowledgedIdIsDuplicateOrMismatchWithinTheWindow() {
        var h = Harness { $0.rememberedAcks = 2 }
        h.ready("w", credit: 10)
        for id in ["a", "b", "c"] {
            h.submit(id, bytes: 10)
            h.result("w", id)
            h.ack(id)
        }
        // The last two ACKed ids are remembered with a hash of their payload.
        #expect(h.submit("c", bytes: 10).rejections.map(\.code) == [.duplicate])
        #expect(h.submit("c", bytes: 10, fill: 9).rejections.map(\.code) == [.payloadMismatch])
        #expect(h.submit("b", bytes: 12).rejections.map(\.code) == [.payloadMismatch])
        // The third-last has left the window: its id is new again, and runs as a new batch.
        #expect(h.submit("a", bytes: 10).accepted == ["a"])
        h.result("w", "a")
        h.ack("a")
        // ACKed again: remembered again, for the next two ACKs.
        #expect(h.submit("a", bytes: 10).rejections.map(\.code) == [.duplicate])
        h.submit("d", bytes: 10); h.result("w", "d"); h.ack("d")
        #expect(h.submit("a", bytes: 10).rejections.map(\.code) == [.duplicate])
        #expect(h.submit("c", bytes: 10).accepted == ["c"])
    }
}
