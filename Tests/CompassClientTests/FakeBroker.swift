import CompassProtocol
@testable import CompassClient

/// A broker as the protocol describes it to a producer, small enough to reason about, with the
/// faults a producer must survive: refusals (`busy`, `session_required`), re-deliveries, a restart
/// that loses everything (no journal), and silence. It keeps two queues, one per direction; a lost
/// connection (the client's new socket, or a restart) empties both.
struct FakeBroker {
    enum Batch: Equatable {
        case queued
        case finished(completed: Bool)
    }

    var id = "broker-1"
    var restarts = 1
    var batches: [String: Batch] = [:]
    /// Batches this incarnation has run to an end, in order (a batch may run again after a restart).
    var runs: [String] = []
    /// Messages on their way to the broker, and to the client.
    var inbound: [ClientMessage] = []
    var outbound: [FromBroker] = []
    /// Silent: it reads nothing and answers nothing (the client should give the socket up).
    var silent = false
    var helloSeen = false
    /// The test's step, stamped on each STATUS reply with the broker's id: when, and which process, read the request.
    var clock = 0
    /// CANCELs of batches it did not hold (a restart lost them, say), answered `unknown_batch`.
    var unknownCancels = 0

    /// Reads the client's next message and answers it.
    mutating func receiveOne(_ rng: inout SplitMix64) {
        guard !silent, !inbound.isEmpty else { return }
        let message = inbound.removeFirst()
        switch message {
        case .hello:
            helloSeen = true
            outbound.append(.welcome(brokerID: id, maxPayloadBytes: nil))
            // Results the session has not ACKed follow the WELCOME.
            for (batchID, state) in batches.sorted(by: { $0.key < $1.key }) {
                if case .finished(let completed) = state { outbound.append(.outcome(Self.outcome(batchID, completed: completed))) }
            }
        case .submit(let s):
            let roll = Int.random(in: 0..<100, using: &rng)
            if let state = batches[s.batchID] {
                // Idempotent: ACCEPTED again, and the outcome if it has one.
                outbound.append(.accepted(batchID: s.batchID))
                if case .finished(let completed) = state { outbound.append(.outcome(Self.outcome(s.batchID, completed: completed))) }
            } else if roll < 10 {
                outbound.append(.rejected(batchID: s.batchID, code: RejectCode.busy.rawValue, message: "full", retryAfterMilliseconds: 30))
            } else if roll < 16 && s.pool == "late" {
                // A pool whose workers have not joined yet (the client waits for it, bounded).
                outbound.append(.rejected(batchID: s.batchID, code: RejectCode.unknownPool.rawValue, message: "no worker yet",
                                          retryAfterMilliseconds: 50))
            } else if roll < 13 || !helloSeen {
                // A restarted broker refuses what a reconnected socket delivered before its HELLO.
                outbound.append(.rejected(batchID: s.batchID, code: RejectCode.sessionRequired.rawValue, message: "say HELLO",
                                          retryAfterMilliseconds: 0))
            } else {
                batches[s.batchID] = .queued
                outbound.append(.accepted(batchID: s.batchID))
            }
        case .cancel(let batchID):
            if batches[batchID] == .queued {
                finish(batchID, completed: false)
            } else if let state = batches[batchID], case .finished(let completed) = state {
                outbound.append(.outcome(Self.outcome(batchID, completed: completed))) // too late: the outcome again
            } else {
                unknownCancels += 1
                outbound.append(.rejected(batchID: batchID, code: RejectCode.unknownBatch.rawValue, message: "", retryAfterMilliseconds: 0))
            }
        case .ack(let batchID):
            if let state = batches[batchID], case .finished = state {
                batches[batchID] = nil
            } else {
                outbound.append(.rejected(batchID: batchID, code: RejectCode.unknownBatch.rawValue, message: "", retryAfterMilliseconds: 0))
            }
        case .status:
            outbound.append(.status(json: Array("\(clock) \(id)".utf8)))
        case .heartbeat:
            outbound.append(.heartbeat(brokerID: id))
        }
    }

    /// A queued batch ends: RESULT mostly, now and then FAILED; sometimes sent twice.
    mutating func runOne(_ rng: inout SplitMix64) {
        guard !silent else { return }
        let queued = batches.filter { $0.value == .queued }.keys.sorted()
        guard !queued.isEmpty else { return }
        let batchID = queued[Int.random(in: 0..<queued.count, using: &rng)]
        finish(batchID, completed: Int.random(in: 0..<10, using: &rng) != 0)
        if Int.random(in: 0..<10, using: &rng) == 0 { outbound.append(.outcome(Self.outcome(batchID, completed: true))) }
    }

    mutating func finish(_ batchID: String, completed: Bool) {
        batches[batchID] = .finished(completed: completed)
        runs.append(batchID)
        outbound.append(.outcome(Self.outcome(batchID, completed: completed)))
    }

    /// Restarted without a journal: a new process id, nothing known, every connection's queues lost.
    mutating func restart() {
        restarts += 1
        id = "broker-\(restarts)"
        batches.removeAll()
        connectionLost()
        helloSeen = false
    }

    mutating func connectionLost() {
        inbound.removeAll()
        outbound.removeAll()
    }

    static func outcome(_ batchID: String, completed: Bool) -> BatchOutcome {
        completed ? Harness.result(batchID) : Harness.failed(batchID, "engine_error")
    }
}
