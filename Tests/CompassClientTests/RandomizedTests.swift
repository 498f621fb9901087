import CompassProtocol
import Testing
@testable import CompassClient

@Suite("Randomized: a client against a refusing, restarting, silent broker")
struct RandomizedTests {
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8, 42, 1234, 99999, 31337] as [UInt64])
    func everyCallerIsAnsweredOnceWithItsOwnBatch(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        var h = Harness(seed: seed) {
            $0.maxBusyBackoffMilliseconds = 200
            $0.unknownPoolWaitMilliseconds = 150
        }
        var broker = FakeBroker()
        let batchCount = 300
        var submitted = 0
        /// Each submit's caller and its batch id; STATUS callers.
        var batchOf: [CallerID: String] = [:]
        var statusCallers: Set<CallerID> = []
        /// Outcomes a previous run of the producer left unacknowledged, that the broker re-sends.
        var strays: [String] = []
        /// Strays claimed: the broker may re-send one (a HELLO crossed our ACK), and it must be ACKed.
        var claimed: [String] = []
        /// When each STATUS caller asked; broker processes the client heard of while STATUS queries
        /// waited (their requests may have been lost, or not: then a reply may answer a later query).
        var askedAt: [CallerID: Int] = [:]
        var heardWhileAsking: Set<String> = []
        var restarts = 0
        var silences = 0

        /// The client's messages go to the broker; those before a new socket are lost with the old one.
        func absorb(_ actions: [ClientAction]) {
            for action in actions {
                switch action {
                case .send(let message): broker.inbound.append(message)
                case .reconnect: broker.connectionLost()
                default: break
                }
            }
        }
        func deliverToClient() {
            guard !broker.outbound.isEmpty else { return }
            let known = h.machine.brokerID
            let asking = !h.machine.statusWaiters.isEmpty
            absorb(h.reply(broker.outbound.removeFirst()))
            if let now = h.machine.brokerID, known != nil && now != known && asking { heardWhileAsking.insert(now) }
        }
        func submitOne() {
            let id: String
            if !strays.isEmpty && Int.random(in: 0..<5, using: &rng) == 0 {
                id = strays.removeFirst() // a resumed producer asks for an old batch again
                claimed.append(id)
            } else if submitted < batchCount {
                id = "b\(submitted)"
                submitted += 1
            } else {
                return
            }
            // One pool in five has no worker yet, now and then.
            let (caller, actions) = h.submit(id, pool: id.hasPrefix("b") && submitted % 5 == 0 ? "late" : "p")
            batchOf[caller] = id
            absorb(actions)
        }
        func silence() {
            // The broker falls silent past the client's liveness: the client takes a new socket.
            broker.silent = true
            absorb(h.advance(h.machine.options.heartbeatMilliseconds * h.machine.options.liveness + 1))
            broker.silent = false
        }
        var unanswered: Int {
            batchOf.keys.filter { h.answers[$0] == nil }.count + statusCallers.filter { h.answers[$0] == nil }.count
        }

        absorb(h.log)
        var steps = 0
        while steps < 60_000 {
            steps += 1
            broker.clock = steps
            let faults = submitted < batchCount
            let roll = Int.random(in: 0..<1000, using: &rng)
            switch roll {
            case 0..<200: broker.receiveOne(&rng)
            case 200..<450: deliverToClient()
            case 450..<530: broker.runOne(&rng)
            case 530..<600: submitOne()
            case 600..<608 where faults:
                if let id = h.machine.outstanding.keys.sorted().randomElement(using: &rng) {
                    absorb(h.step { m, t in m.cancel(batchID: id, now: t) })
                }
            case 608..<614 where faults:
                let (caller, actions) = h.status(timeout: UInt64.random(in: 20...3_000, using: &rng))
                statusCallers.insert(caller)
                askedAt[caller] = steps
                absorb(actions)
            case 614..<616 where faults:
                restarts += 1
                broker.restart()
            case 616..<618 where faults:
                silences += 1
                silence()
            case 618..<620 where faults:
                let id = "old-\(strays.count)-\(steps)"
                strays.append(id)
                broker.outbound.append(.outcome(Harness.result(id)))
            case 620..<622 where faults && !claimed.isEmpty:
                broker.outbound.append(.outcome(Harness.result(claimed.randomElement(using: &rng)!)))
            default:
                absorb(h.advance(UInt64.random(in: 1...40, using: &rng)))
            }
            if submitted == batchCount && strays.isEmpty && unanswered == 0 { break }
        }

        #expect(unanswered == 0, "seed \(seed): \(unanswered) callers unanswered after \(steps) steps; outstanding \(h.machine.outstanding.keys.sorted().prefix(10))")
        var outcomes = 0
        for (caller, id) in batchOf {
            let answers = h.answers[caller] ?? []
            #expect(answers.count == 1, "seed \(seed): \(id) answered \(answers)")
            if case .outcome(let batchID, _)? = answers.first {
                #expect(batchID == id, "seed \(seed): the caller of \(id) got \(batchID)'s outcome")
                outcomes += 1
            }
        }
        for caller in statusCallers { #expect(h.answers[caller]?.count == 1, "seed \(seed): STATUS \(caller) answered \(h.answers[caller] ?? [])") }
        // A STATUS reply answers a query asked before the broker read its request (not the late reply
        // of one that timed out), but from a restarted broker the client heard of while queries waited.
        var statusAnswers = 0
        for caller in statusCallers {
            guard case .status(let json)? = h.answers[caller]?.first, let asked = askedAt[caller] else { continue }
            let stamp = String(decoding: json, as: UTF8.self).split(separator: " ")
            guard stamp.count == 2, let read = Int(stamp[0]) else { Issue.record("seed \(seed): STATUS \(json)"); continue }
            statusAnswers += 1
            #expect(read >= asked || heardWhileAsking.contains(String(stamp[1])),
                    "seed \(seed): STATUS \(caller) asked at step \(asked) got the reply to a request read at step \(read)")
        }
        let refusedUnknown = batchOf.filter { if case .error(.rejected("unknown_batch", _))? = h.answers[$0.key]?.first { return true }; return false }
        #expect(refusedUnknown.isEmpty, "seed \(seed): \(refusedUnknown.values.sorted()) given up on unknown_batch")
        let delivered = h.log.completed.map(\.batchID)
        #expect(Set(delivered).count == delivered.count, "seed \(seed): a batch delivered twice")
        #expect(outcomes > batchCount * 3 / 4, "seed \(seed): only \(outcomes) of \(batchOf.count) submits got an outcome")
        #expect(restarts > 0 && silences > 0, "seed \(seed): the faults never happened")

        // Quiet now: one more reconnect makes the broker re-send what it still holds, and the client
        // ACKs every outcome it delivered. What stays is only what no caller got (abandoned by a refusal).
        silence()
        while !broker.inbound.isEmpty || !broker.outbound.isEmpty {
            broker.receiveOne(&rng)
            deliverToClient()
        }
        // Every refusal that fails a caller is one of a batch the broker never took, so nothing stays.
        let held = broker.batches.keys.sorted()
        #expect(held.isEmpty, "seed \(seed): the broker still holds \(held)")
        #expect(h.machine.unclaimed.isEmpty, "seed \(seed): outcomes kept that nobody will claim: \(h.machine.unclaimed.keys.sorted())")
        print("client randomized seed \(seed): \(batchOf.count) submits, \(outcomes) outcomes, \(h.log.notifications.filter { if case .waitingForPool = $0 { return true }; return false }.count) pool waits, \(statusCallers.count) STATUS (\(statusAnswers) answered), \(restarts) broker restarts, \(silences) silences, \(h.log.reconnects) reconnects, \(broker.unknownCancels) CANCELs unknown, \(claimed.count) claimed, \(steps) steps")
    }
}
