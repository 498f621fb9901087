import CompassEngines
import CompassProtocol
import Testing
@testable import CompassWorker


@Suite("Randomized: a worker between a churning broker and a dying engine")
struct RandomizedTests {
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8, 42, 1234, 99999, 31337] as [UInt64])
    func creditAdmissionAndAnswersStaySound(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        let capacities = [EngineCapacity(), EngineCapacity(maxBatches: 3), EngineCapacity(sequences: 8), EngineCapacity(sequences: 32)]
        let capacity = capacities[Int(rng.next() % UInt64(capacities.count))]
        var h = Harness { o in
            o.progressTimeoutMilliseconds = 2_000
            o.maxStartFailures = 1_000
            o.statsIntervalMilliseconds = 0
        }
        // Mostly one-request batches, now and then a large one.
        let batchCount = 400
        var batches: [(String, UInt32)] = []
        for i in 0..<batchCount { batches.append(("b\(i)", Int.random(in: 0..<10, using: &rng) == 0 ? UInt32.random(in: 2...40, using: &rng) : 1)) }
        var broker = FakeBroker(supportsExplicit: rng.next() % 3 != 0, batches: batches)
        for (id, n) in batches { broker.sizes[id] = n }
        var engine = FakeEngine()
        /// Whether a BATCH sent under an earlier registration reached the worker after its last READY.
        var staleBatchSinceReady = false
        var readyEpoch = 0
        var creditChecks = 0
        var forgets = 0

        func absorb(_ actions: [WorkerAction]) {
            for action in actions {
                engine.apply(action)
                switch action {
                case .connect, .disconnect:
                    broker.connectionClosed()
                case .send(let message):
                    if case .ready = message {
                        staleBatchSinceReady = false
                        readyEpoch = broker.epoch + broker.readiesInFlight + 1
                    }
                    broker.inbound.append(message)
                default:
                    break
                }
            }
        }
        func deliverToWorker() {
            guard let (epoch, message) = broker.outbound.popFirst() else { return }
            switch message {
            case .welcome(let mode): absorb(h.welcome(mode))
            case .batch(let job):
                if epoch < readyEpoch { staleBatchSinceReady = true }
                absorb(h.step { m, t in m.batch(job, now: t) })
            case .cancel(let id, let attempt): absorb(h.step { m, t in m.cancel(batchID: id, attempt: attempt, now: t) })
            case .heartbeat: absorb(h.step { m, t in m.brokerHeartbeat(now: t) })
            case .disconnect: absorb(h.step { m, t in m.disconnected(reason: "unknown worker", now: t) })
            }
        }
        /// The worker's count of its credit equals the broker's plus what is on its way, whenever
        /// both sides agree on the registration.
        func checkCredit(_ step: Int) {
            let m = h.machine
            guard m.connected, let mode = m.creditMode, broker.known, broker.readiesInFlight == 0, !staleBatchSinceReady,
                  readyEpoch == broker.epoch, !broker.outbound.contains(where: { $0.epoch < broker.epoch }) else { return }
            #expect(mode == broker.mode)
            creditChecks += 1
            var inFlight = broker.outbound.filter { if case .batch = $0.message { return true }; return false }.count
            for message in broker.inbound {
                switch message {
                case .credit(let n): inFlight += n
                case .result, .failed: if mode == .implicit { inFlight += 1 }
                default: break
                }
            }
            #expect(m.outstanding == broker.credit + inFlight, "seed \(seed) step \(step): worker counts \(m.outstanding), broker \(broker.credit) + \(inFlight) on the way")
        }
        func engineStep() {
            switch engine.state {
            case .down: break
            case .starting:
                if Int.random(in: 0..<20, using: &rng) == 0 {
                    engine.state = .down
                    absorb(h.step { m, t in m.engineDied(code: .startupFailed, message: "load failed", now: t) })
                } else {
                    engine.state = .ready
                    absorb(h.ready(capacity))
                }
            case .ready:
                guard !engine.jobs.isEmpty else { return }
                let i = Int.random(in: 0..<engine.jobs.count, using: &rng)
                let job = engine.jobs[i]
                let roll = Int.random(in: 0..<100, using: &rng)
                if engine.cancelRequested.contains("\(job.id)#\(job.attempt)") || roll < 2 {
                    engine.jobs.remove(at: i)
                    let code: FailureCode = roll < 2 ? .engineError : .cancelled
                    absorb(h.step { m, t in m.engineFailed(batchID: job.id, attempt: job.attempt, code: code, retryable: code != .cancelled, message: "x", now: t) })
                } else if roll < 40 && job.done + 1 < job.requests {
                    engine.jobs[i].done += 1
                    absorb(h.progress(job.id, done: UInt32(job.done + 1), total: UInt32(job.requests), attempt: job.attempt))
                } else {
                    engine.jobs.remove(at: i)
                    absorb(h.finish(job.id, attempt: job.attempt))
                }
            }
        }

        absorb(h.step { m, t in m.start(now: t) })
        var steps = 0
        while steps < 30_000 {
            steps += 1
            let roll = Int.random(in: 0..<1000, using: &rng)
            switch roll {
            case 0..<250: broker.receiveOne()
            case 250..<450: deliverToWorker()
            case 450..<550: _ = broker.dispatch()
            case 550..<850: engineStep()
            case 850..<853:
                if engine.state == .ready {
                    engine.state = .down
                    absorb(h.step { m, t in m.engineDied(code: .engineDead, message: "crash", now: t) })
                }
            case 853..<856: broker.cancelOne(Int.random(in: 0..<1000, using: &rng))
            case 856..<858:
                if broker.known { forgets += 1 }
                broker.forget() // restarted without a journal, or declared the worker dead
            case 858..<860:
                // The broker falls silent: the worker gives the connection up and makes a new one.
                h.brokerAlive = false
                absorb(h.advance(UInt64(h.machine.heartbeatMilliseconds * h.machine.liveness + 1)))
                h.brokerAlive = true
            default:
                absorb(h.advance(UInt64.random(in: 1...40, using: &rng)))
            }
            checkCredit(steps)
            if broker.outcomes.count == batchCount { break }
        }
        #expect(broker.outcomes.count == batchCount, "seed \(seed): \(broker.outcomes.count) of \(batchCount) answered in \(steps) steps; queue \(broker.queue.count), at worker \(broker.atWorker.count), worker \(h.machine.held.count) held \(h.machine.running.count) running, engine \(engine.state)")
        #expect(broker.outcomes.values.allSatisfy { $0 == 1 }, "seed \(seed): answered twice: \(broker.outcomes.filter { $0.value > 1 })")
        #expect(creditChecks > steps / 4, "seed \(seed): the credit count was compared in \(creditChecks) of \(steps) steps")
        #expect(broker.epoch > 1, "seed \(seed): the worker never registered again")
        // Each time the broker forgets the worker, it answers everything on its way with
        // DISCONNECT; the worker registers again once, not once per DISCONNECT.
        let reregistrations = h.log.events.filter { if case .reregistering(let why) = $0 { return why == "unknown worker" }; return false }.count
        #expect(reregistrations <= forgets, "seed \(seed): \(reregistrations) registrations for \(forgets) times forgotten")
        print("worker randomized seed \(seed) (\(capacity), \(broker.supportsExplicit ? "explicit" : "implicit") broker): \(batchCount) batches answered once in \(steps) steps, \(broker.epoch) registrations, \(h.machine.restarts) engine restarts, credit compared \(creditChecks) times")
        // Then SIGTERM: the worker drains and exits.
        absorb(h.step { m, t in m.signal("SIGTERM", now: t) })
        while h.machine.exitCode == nil && steps < 40_000 {
            steps += 1
            engineStep()
            absorb(h.advance(10))
        }
        #expect(h.machine.exitCode == 0, "seed \(seed)")
    }
}
