import CompassProtocol
import Testing
@testable import CompassClient

@Suite("Client state machine: submits, outcomes, exactly-once delivery")
struct SubmitTests {
    @Test func startsWithHelloAndSubmitsAtOnce() {
        var h = Harness()
        #expect(h.log.wire == ["HELLO"])
        let (_, actions) = h.submit("a")
        #expect(actions.wire == ["SUBMIT a"])
        #expect(h.machine.outstanding["a"]?.accepted == false)
        h.reply(.accepted(batchID: "a"))
        #expect(h.machine.outstanding["a"]?.accepted == true)
    }

    @Test func anOutcomeReachesItsCallerOnceAndIsAcked() {
        var h = Harness()
        let (caller, _) = h.submit("a")
        h.reply(.accepted(batchID: "a"))
        let done = h.result("a")
        #expect(done.completed.map(\.caller) == [caller])
        #expect(done.acks == ["a"])
        #expect(h.machine.outstanding.isEmpty && h.machine.delivered.contains("a"))
        // The broker re-sends it (after a HELLO, or a re-SUBMIT crossed it): ACKed again, not delivered.
        let again = h.result("a")
        #expect(again.completed.isEmpty && again.acks == ["a"])
        let failedToo = h.reply(.outcome(Harness.failed("a", "cancelled")))
        #expect(failedToo.completed.isEmpty && failedToo.acks == ["a"])
        #expect(h.answers[caller] == [.outcome(batchID: "a", completed: true)])
    }

    @Test func aFailedBatchIsAnOutcomeToo() {
        var h = Harness()
        let (caller, _) = h.submit("a")
        let failed = h.reply(.outcome(Harness.failed("a", "engine_dead")))
        #expect(failed.acks == ["a"])
        #expect(h.answers[caller] == [.outcome(batchID: "a", completed: false)])
    }

    @Test func manualAckLeavesTheAckToTheCaller() {
        var h = Harness { $0.manualAck = true }
        let (caller, _) = h.submit("a")
        let done = h.result("a")
        #expect(done.completed.map(\.caller) == [caller] && done.acks.isEmpty)
        #expect(h.step { m, t in m.ack(batchID: "a", now: t) }.acks == ["a"])
        // A replay of a delivered outcome is ACKed even so: its caller has it already.
        #expect(h.result("a").acks == ["a"])
    }

    @Test func aBatchIDAlreadyOutstandingIsRefusedHere() {
        var h = Harness()
        let (first, _) = h.submit("a")
        let (second, actions) = h.submit("a")
        #expect(actions.submits.isEmpty)
        #expect(actions.failures.map(\.caller) == [second])
        guard case .rejected(let code, _)? = actions.failures.first?.error else { Issue.record("\(actions)"); return }
        #expect(code == "duplicate")
        #expect(h.result("a").completed.map(\.caller) == [first])
    }

    @Test func aPayloadOverTheBrokersLimitIsRefusedBeforeItIsSent() {
        var h = Harness()
        h.reply(.welcome(brokerID: "b1", maxPayloadBytes: 10))
        #expect(h.machine.maxPayloadBytes == 10)
        let (caller, over) = h.submit("big", bytes: 11)
        #expect(over.submits.isEmpty && h.machine.outstanding.isEmpty)
        guard case .rejected(let code, let message)? = over.failures.first?.error, over.failures.first?.caller == caller else {
            Issue.record("\(over)"); return
        }
        #expect(code == "too_large" && message.contains("11 bytes") && message.contains("limit of 10 bytes"))
        #expect(h.submit("fits", bytes: 10).actions.submits == ["fits"])
    }

    @Test func anOutcomeNobodyAwaitsIsKeptForTheSubmitThatClaimsIt() {
        var h = Harness()
        // A resumed producer: the broker re-sends what the session's last run did not ACK.
        let early = h.result("old")
        #expect(early.completed.isEmpty && early.acks.isEmpty, "kept, not ACKed: nobody has stored it yet")
        #expect(h.machine.unclaimed["old"] != nil)
        #expect(h.result("old").acks.isEmpty && h.machine.unclaimed.count == 1, "a second copy changes nothing")
        let (caller, claim) = h.submit("old")
        #expect(claim.submits.isEmpty, "not run again")
        #expect(claim.completed.map(\.caller) == [caller] && claim.acks == ["old"])
        #expect(h.machine.unclaimed.isEmpty)
    }

    @Test func progressIsReportedForOutstandingBatchesOnly() {
        var h = Harness()
        h.submit("a")
        #expect(h.reply(.progress(batchID: "a", done: 1, total: 4)).notifications == [.progress(batchID: "a", done: 1, total: 4)])
        #expect(h.reply(.progress(batchID: "other", done: 1, total: 4)).notifications.isEmpty)
        h.result("a")
        #expect(h.reply(.progress(batchID: "a", done: 4, total: 4)).notifications.isEmpty)
    }

    @Test func cancelSendsCancelForAnOutstandingBatchAndItsCallerGetsTheOutcome() {
        var h = Harness()
        let (caller, _) = h.submit("a")
        #expect(h.step { m, t in m.cancel(batchID: "a", now: t) }.cancels == ["a"])
        #expect(h.step { m, t in m.cancel(batchID: "unknown", now: t) }.cancels.isEmpty)
        #expect(h.machine.outstanding["a"] != nil, "the caller waits for the broker's answer")
        h.reply(.outcome(Harness.failed("a", "cancelled")))
        #expect(h.answers[caller] == [.outcome(batchID: "a", completed: false)])
        #expect(h.step { m, t in m.cancel(batchID: "a", now: t) }.cancels.isEmpty, "answered: nothing to cancel")
    }

    @Test func statusQueriesAreAnsweredInOrderAndTimeOut() {
        var h = Harness()
        let (first, ask) = h.status(timeout: 1_000)
        #expect(ask.statusRequests == 1)
        let (second, _) = h.status(timeout: 200)
        #expect(h.reply(.status(json: [1])).statusAnswers.map(\.caller) == [first])
        h.reply(.heartbeat(brokerID: "b"))
        #expect(h.advance(150).failures.isEmpty)
        h.reply(.heartbeat(brokerID: "b"))
        let late = h.advance(50)
        #expect(late.failures.map(\.caller) == [second])
        #expect(late.failures.first?.error == .timedOut("the broker's STATUS at tcp://broker"))
        #expect(h.reply(.status(json: [2])).statusAnswers.isEmpty, "an answer after the deadline finds nobody")
    }

    @Test func aCancelTheBrokerDidNotKnowIsSentAgainOnceItsReSubmitIsAccepted() {
        var h = Harness()
        h.reply(.welcome(brokerID: "b1", maxPayloadBytes: nil))
        let (caller, _) = h.submit("a")
        h.reply(.accepted(batchID: "a"))
        // The broker restarts without a journal; the CANCEL reaches the new process before the
        // client hears of it, and the re-SUBMIT follows.
        #expect(h.step { m, t in m.cancel(batchID: "a", now: t) }.cancels == ["a"])
        #expect(h.reply(.heartbeat(brokerID: "b2")).wire == ["HELLO", "SUBMIT a"])
        let refused = h.rejected("a", .unknownBatch)
        #expect(refused.failures.isEmpty && refused.sent.isEmpty, "the re-SUBMIT re-creates the batch: its caller waits")
        #expect(h.machine.outstanding["a"] != nil)
        h.reply(.welcome(brokerID: "b2", maxPayloadBytes: nil))
        #expect(h.reply(.accepted(batchID: "a")).cancels == ["a"], "cancelled again once the broker holds it")
        #expect(h.reply(.accepted(batchID: "a")).cancels.isEmpty, "once")
        #expect(h.reply(.outcome(Harness.failed("a", "cancelled"))).acks == ["a"], "the outcome is delivered and ACKed, not orphaned")
        #expect(h.answers[caller] == [.outcome(batchID: "a", completed: false)])
        #expect(h.machine.unclaimed.isEmpty)

        // A CANCEL lost with a silent broker's socket goes again after the re-SUBMIT's ACCEPTED.
        h.submit("b")
        h.step { m, t in m.cancel(batchID: "b", now: t) }
        #expect(h.advance(301).submits == ["b"])
        #expect(h.reply(.accepted(batchID: "b")).cancels == ["b"])

        // Cancelled before its first ACCEPTED came: the CANCEL followed the SUBMIT, once is enough.
        h.submit("c")
        h.step { m, t in m.cancel(batchID: "c", now: t) }
        #expect(h.reply(.accepted(batchID: "c")).cancels.isEmpty)

        // `unknown_batch` for an awaited batch not being cancelled (the answer to an ACK of an earlier
        // batch with its id, say) is no reason to give it up.
        let (d, _) = h.submit("d")
        #expect(h.rejected("d", .unknownBatch).isEmpty)
        #expect(h.result("d").completed.map(\.caller) == [d])
    }

    @Test func aClaimedOutcomeCountsAsDeliveredSoAReplayOfItIsAcked() {
        var h = Harness()
        h.result("old")
        h.result("older")
        let (caller, _) = h.submit("old")
        #expect(h.machine.delivered.contains("old"))
        #expect(Array(h.machine.unclaimedOrder) == ["older"], "the claimed id leaves the order list")
        // The broker re-sends it (our ACK crossed a HELLO): ACKed again, not kept for a second claim.
        let replay = h.result("old")
        #expect(replay.acks == ["old"] && replay.completed.isEmpty)
        #expect(h.machine.unclaimed["old"] == nil)
        #expect(h.answers[caller] == [.outcome(batchID: "old", completed: true)])
    }

    @Test func aLateReplyToATimedOutStatusQueryIsDroppedNotGivenToTheNextQuery() {
        var h = Harness()
        let (first, _) = h.status(timeout: 50)
        #expect(h.advance(50).failures.map(\.caller) == [first])
        let (second, _) = h.status(timeout: 1_000)
        #expect(h.reply(.status(json: [1])).statusAnswers.isEmpty, "the first query's reply, late: it is not the second's")
        #expect(h.reply(.status(json: [2])).statusAnswers.map(\.json) == [[2]])
        #expect(h.answers[second] == [.status([2])])

        // A new socket: the replies owed on the old one never come.
        h.reply(.heartbeat(brokerID: "b"))
        let (third, _) = h.status(timeout: 50)
        let lost = h.advance(301)
        #expect(lost.failures.map(\.caller) == [third] && lost.reconnects == 1)
        let (fourth, _) = h.status(timeout: 1_000)
        #expect(h.reply(.status(json: [4])).statusAnswers.map(\.caller) == [fourth])

        // A restarted broker lost the request of a query waiting then: its timeout owes nothing.
        let (fifth, _) = h.status(timeout: 50)
        h.reply(.heartbeat(brokerID: "b2"))
        #expect(h.advance(50).failures.map(\.caller) == [fifth])
        let (sixth, _) = h.status(timeout: 1_000)
        #expect(h.reply(.status(json: [6])).statusAnswers.map(\.caller) == [sixth])
    }

    @Test func closeFailsEveryCallerAndEverythingAfter() {
        var h = Harness()
        let (a, _) = h.submit("a")
        let (b, _) = h.submit("b")
        let (s, _) = h.status()
        let closed = h.step { m, _ in m.close() }
        #expect(Set(closed.failures.map(\.caller)) == [a, b, s])
        #expect(closed.failures.allSatisfy { $0.error == .closed })
        let (late, after) = h.submit("c")
        #expect(after.failures.map(\.caller) == [late] && after.sent.isEmpty)
        #expect(h.result("a").sent.isEmpty && h.advance(10_000).isEmpty, "a closed client sends nothing")
    }
}
