import CompassEngines
import CompassProtocol

/// Admission (held batches into the engine) and credit (batches asked of the broker).
///
/// With a sequence capacity C, the worker aims at C + Q requests inside the engine and C + Q + A
/// held and inside together, where Q (`engineQueue`) is a queue inside the engine, so a sequence
/// that ends is replaced at the engine's next step without a trip through the worker (C by default:
/// requests of equal length end together, a whole engine's worth at once, and a shorter queue left
/// the engine two-thirds full while the next ones came through the worker and the engine process;
/// bench/gpu/results/2026-12-02-h200-stream-queue), and A (`readAhead`) is held here, so a slot
/// that frees is filled without a trip to the broker.
/// The broker sends batches of unknown size, so the credit asked for is the missing requests
/// divided by the expected batch size (a moving average of the batches received; the engine's
/// capacity before the first one, which makes the first grant the two batches workers always took).
extension WorkerStateMachine {
    /// Requests the worker keeps in the engine's own queue beyond its capacity: a whole capacity
    /// unless `--engine-queue` says otherwise (a waiting request costs the engine no KV cache).
    public var engineQueue: Int {
        options.engineQueue ?? max(1, capacity.sequences ?? 0)
    }

    /// Requests the worker holds beyond what the engine takes.
    public var readAhead: Int {
        options.readAhead ?? max(2, (capacity.sequences ?? 0) / 4)
    }

    /// The window in batches (held, running and on their way) of a worker whose engine has no
    /// sequence capacity, or whose broker returns credit with results: the engine's batches plus
    /// one waiting, or `--credit`, whichever is more. What workers always asked for.
    public var batchWindow: Int { max(options.credit, capacity.maxBatches + 1) }

    /// Admits, then asks for credit: after every event that may have changed either.
    mutating func settle(_ now: UInt64) {
        admit(now)
        grant(now)
    }

    /// Whether the engine has room for one more held batch.
    func hasRoom() -> Bool {
        if let sequences = capacity.sequences {
            // A batch goes in whenever the engine is below capacity (plus its queue), even one
            // larger than the room left: the engine queues the rest, and stopping short would
            // leave slots empty until a large batch's tail drains.
            return inEngineRequests < sequences + engineQueue
        }
        return running.count < capacity.maxBatches
    }

    /// Feeds the engine held batches, oldest first, while it has room.
    mutating func admit(_ now: UInt64) {
        guard engine == .ready, drainingSince == nil else { return }
        while !held.isEmpty, hasRoom() {
            let job = held.removeFirst()
            let requests = Self.requests(job)
            heldRequests -= requests
            if running.isEmpty { lastProgress = now }
            running.append(RunningBatch(batchID: job.batchID, attempt: job.attempt, requests: requests))
            inEngineRequests += requests
            emit(.submit(job))
        }
    }

    /// Asks the broker for the batches the worker wants beyond those granted already.
    mutating func grant(_ now: UInt64) {
        guard connected, registered, let mode = creditMode else { return }
        let n = wantedCredit(mode)
        guard n > 0 else { return }
        outstanding += n
        send(.credit(n), now)
    }

    /// Credit to ask for now, given what is held, running and on its way.
    func wantedCredit(_ mode: CreditMode) -> Int {
        guard engine == .ready, drainingSince == nil, exitCode == nil else { return 0 }
        let batches = held.count + running.count + outstanding
        var wanted = batchWindow - batches
        // Only explicit credit can shrink again: with implicit credit the window stays in batches.
        if let sequences = capacity.sequences, mode == .explicit {
            let target = sequences + engineQueue + readAhead
            let size = max(1, batchSizeEstimate)
            let missing = Double(target - inEngineRequests - heldRequests) - Double(outstanding) * size
            var byRequests = missing > 0 ? Int((missing / size).rounded(.up)) : 0
            // One batch always on its way: when large batches fill the engine past the target, the
            // next is here the moment it drops below capacity, instead of a round trip later.
            if held.isEmpty && outstanding == 0 { byRequests = max(byRequests, 1) }
            wanted = max(wanted, byRequests)
        }
        return max(0, min(wanted, WireProtocol.maxCredit - outstanding))
    }
}
