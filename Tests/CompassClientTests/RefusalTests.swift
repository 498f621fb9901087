import CompassProtocol
import Testing
@testable import CompassClient

@Suite("Client state machine: the broker's refusals")
struct RefusalTests {
    /// The waits announced with `busy` notifications.
    static func busyWaits(_ actions: [ClientAction]) -> [UInt32] {
        actions.notifications.compactMap { if case .busy(_, let wait) = $0 { return wait }; return nil }
    }

    @Test func busyIsRetriedWithDoublingCappedBackoffAndJitter() {
        var h = Harness { $0.maxBusyBackoffMilliseconds = 500 }
        h.submit("a")
        var waits: [UInt32] = []
        for _ in 0..<6 {
            let refused = h.rejected("a", .busy, retryAfter: 100)
            #expect(refused.failures.isEmpty)
            let wait = Self.busyWaits(refused)
            #expect(wait.count == 1)
            waits += wait
            let retryAt = h.machine.outstanding["a"]!.retryAt!
            #expect(retryAt == h.now + UInt64(wait[0]))
            // Nothing before the wait is over; the SUBMIT exactly then.
            // (The broker heartbeats meanwhile, so only the backoff is at play.)
            h.now = retryAt - 1
            h.reply(.heartbeat(brokerID: "b"))
            #expect(h.step { m, t in m.tick(now: t) }.submits.isEmpty)
            h.now = retryAt
            #expect(h.step { m, t in m.tick(now: t) }.submits == ["a"])
            #expect(h.machine.outstanding["a"]?.retryAt == nil)
        }
        // 100, 200, 400, then the 500 cap; each with 0...20 ms of jitter.
        let bases: [UInt32] = [100, 200, 400, 500, 500, 500]
        for (wait, base) in zip(waits, bases) { #expect(wait >= base && wait <= base + 20, "\(waits)") }
    }

    @Test func theBackoffStartsFromTwentyMillisecondsWithoutAHint() {
        var h = Harness()
        h.submit("a")
        let wait = Self.busyWaits(h.rejected("a", .busy, retryAfter: 0))
        #expect(wait.count == 1 && wait[0] >= 20 && wait[0] <= 40)
    }

    @Test func shuttingDownIsRetriedLikeBusy() {
        var h = Harness()
        h.submit("a")
        let refused = h.rejected("a", .shuttingDown, retryAfter: 50)
        #expect(refused.failures.isEmpty && h.machine.outstanding["a"]?.retryAt != nil)
        #expect(h.advance(80).submits == ["a"])
    }

    @Test func busyFailsAtOnceWithoutRetryBusy() {
        var h = Harness { $0.retryBusy = false }
        let (caller, _) = h.submit("a")
        let refused = h.rejected("a", .busy, retryAfter: 250, message: "pool full")
        #expect(refused.failures.map(\.caller) == [caller])
        #expect(refused.failures.first?.error == .busy(message: "pool full", retryAfterMilliseconds: 250))
        #expect(h.machine.outstanding.isEmpty)
    }

    @Test func unknownPoolWithAHintWaitsForThePoolBoundedAndSaysSoOncePerPool() {
        var h = Harness { $0.unknownPoolWaitMilliseconds = 2_000 }
        let (a, _) = h.submit("a", pool: "late")
        h.submit("b", pool: "late")
        let first = h.rejected("a", .unknownPool, retryAfter: 5_000, message: "no worker yet")
        #expect(first.notifications == [.waitingForPool(pool: "late", message: "no worker yet")])
        let retryAt = h.machine.outstanding["a"]!.retryAt!
        #expect(retryAt >= h.now + 1_000 && retryAt <= h.now + 1_050, "the hint, capped at a second, with jitter")
        #expect(h.rejected("b", .unknownPool, retryAfter: 5_000).notifications.isEmpty, "said once per pool")
        // A batch of the pool accepted: the next wait for it is said again.
        h.reply(.accepted(batchID: "b"))
        #expect(h.machine.waitingPools.isEmpty)
        h.now += 1_900
        #expect(h.rejected("a", .unknownPool, retryAfter: 5_000).notifications.count == 1)
        // Past the bound: final, with how long it waited.
        h.now += 100
        let final = h.rejected("a", .unknownPool, retryAfter: 5_000, message: "no worker yet")
        #expect(final.failures.map(\.caller) == [a])
        #expect(final.failures.first?.error == .rejected(code: "unknown_pool", message: "no worker yet (waited 2 s for a worker of pool 'late')"))
    }

    @Test func aPoolLeavesTheWaitingPoolsWhenNothingWaitsForItAnyMore() {
        var h = Harness { $0.unknownPoolWaitMilliseconds = 2_000 }
        let announced: (ClientAction) -> Bool = { if case .notify(.waitingForPool) = $0 { return true }; return false }
        // The waiting batch fails (a final refusal, the wait's bound, ...).
        h.submit("a", pool: "late")
        #expect(h.rejected("a", .unknownPool, retryAfter: 500).filter(announced).count == 1)
        h.rejected("a", .badPayload)
        #expect(h.machine.waitingPools.isEmpty)
        // Its outcome comes (a cancelled batch, say).
        h.submit("b", pool: "late")
        #expect(h.rejected("b", .unknownPool, retryAfter: 500).filter(announced).count == 1, "announced again")
        h.reply(.outcome(Harness.failed("b", "cancelled")))
        #expect(h.machine.waitingPools.isEmpty)
        // Another batch still waits: the pool stays.
        h.submit("c", pool: "late")
        h.submit("d", pool: "late")
        #expect(h.rejected("c", .unknownPool, retryAfter: 500).filter(announced).count == 1)
        #expect(h.rejected("d", .unknownPool, retryAfter: 500).filter(announced).isEmpty)
        h.rejected("c", .badPayload)
        #expect(h.machine.waitingPools == ["late"])
        // The client closes.
        h.submit("e", pool: "other")
        #expect(h.rejected("e", .unknownPool, retryAfter: 500).filter(announced).count == 1)
        h.step { m, _ in m.close() }
        #expect(h.machine.waitingPools.isEmpty)

        // Accepted: the pool has a worker, and a later wait of that batch (after a broker restart,
        // say) is bounded afresh.
        var accepted = Harness { $0.unknownPoolWaitMilliseconds = 2_000 }
        accepted.submit("a", pool: "late")
        accepted.rejected("a", .unknownPool, retryAfter: 500)
        accepted.now += 1_500
        accepted.reply(.accepted(batchID: "a"))
        #expect(accepted.machine.waitingPools.isEmpty && accepted.machine.outstanding["a"]?.poolWaitSince == nil)
        accepted.now += 1_000
        #expect(accepted.rejected("a", .unknownPool, retryAfter: 500).failures.isEmpty, "a new wait, not 2.5 s of one")
    }

    @Test func unknownPoolIsFinalWithoutAHintOrWithoutAWait() {
        var h = Harness { $0.unknownPoolWaitMilliseconds = 2_000 }
        h.submit("a", pool: "bad name")
        #expect(h.rejected("a", .unknownPool, retryAfter: 0, message: "invalid").failures.first?.error
                == .rejected(code: "unknown_pool", message: "invalid"))
        var impatient = Harness()
        impatient.submit("a")
        #expect(impatient.rejected("a", .unknownPool, retryAfter: 1_000).failures.count == 1)
    }

    @Test func sessionRequiredSaysHelloThenTheSameSubmitThreeTimesAtMost() {
        var h = Harness()
        let (caller, _) = h.submit("a")
        for _ in 0..<3 {
            #expect(h.rejected("a", .sessionRequired).failures.isEmpty)
            #expect(h.advance(1).wire == ["HELLO", "SUBMIT a"], "HELLO first, so the broker binds the session before the SUBMIT")
        }
        let final = h.rejected("a", .sessionRequired, message: "say HELLO first")
        #expect(final.failures.map(\.caller) == [caller])
        #expect(final.failures.first?.error == .rejected(code: "session_required", message: "say HELLO first"))
    }

    @Test func otherCodesAreFinalAndRefusalsOfUnknownBatchesChangeNothing() {
        for code in [RejectCode.badPayload, .duplicate, .payloadMismatch, .tooLarge, .badFrame] {
            var h = Harness()
            let (caller, _) = h.submit("a")
            let refused = h.rejected("a", code, message: "because")
            #expect(refused.failures.map(\.caller) == [caller])
            #expect(refused.failures.first?.error == .rejected(code: code.rawValue, message: "because"))
        }
        var h = Harness()
        h.submit("a")
        // The answer to an ACK of an outcome already re-delivered, say.
        #expect(h.rejected("other", .unknownBatch).isEmpty)
        #expect(h.machine.outstanding["a"] != nil)
    }
}
