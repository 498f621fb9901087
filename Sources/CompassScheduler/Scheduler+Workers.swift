import CompassProtocol

extension Scheduler {
    /// READY: registers a worker for `pool` with `credit`. A READY from a known id is a restart:
    /// what the old incarnation held is requeued first. `creditMode` is what the READY asked for
    /// (`implicit` when it did not say); WELCOME confirms it, so a worker can tell this broker
    /// from one that predates explicit credit.
    ///
    /// - Parameter process: who the worker is beyond this connection (its READY's host and pid):
    ///   a worker that reconnects under another routing id is the same process, and its late
    ///   answers to what it was sent before return its credit.
    public mutating func workerReady(_ id: PeerID, pool: String, credit: Int, creditMode: CreditMode = .implicit,
                                     process: String = "", now: Timestamp) -> [Action] {
        collect { s in
            if s.workers[id] != nil { s.loseWorker(id, reason: "re-registered (restarted)", now) }
            if !s.disconnectedRecently.isEmpty { s.disconnectedRecently.remove(id) }
            if s.pools.index(forKey: pool) == nil { s.pools.add(pool) }
            var record = WorkerRecord(id: id, pool: pool, registeredAt: now, credit: min(max(credit, 0), s.config.maxCredit),
                                      lastSeen: now, lastSent: now, generation: s.nextGeneration, process: process)
            record.creditMode = creditMode
            record.placementSeed = AffinityPlacement.seed(process.isEmpty ? id.description : process)
            s.nextGeneration += 1
            s.workers[id] = record
            s.pools[pool]!.workers.insert(id)
            s.sendWorker(id, .welcome(workerID: id.description, creditMode: creditMode), now)
            s.emit(.event(.workerRegistered(worker: id, pool: pool, credit: record.credit)))
            s.offer(id)
            s.dispatch(pool, now)
        }
    }

    /// The worker broke the protocol (a malformed or oversized message, a READY the broker cannot
    /// take): DISCONNECT tells it to register again, so the broker forgets it as the worker will
    /// forget its batches (docs/protocol.md, Worker rules 5): what it held goes back to the queue,
    /// charged as a `worker_lost` attempt, and its late answers count as stale.
    public mutating func workerRefused(_ id: PeerID, code: RejectCode, reason: String, now: Timestamp) -> [Action] {
        collect { s in
            if s.workers[id] != nil { s.loseWorker(id, reason: "refused (\(code.rawValue)): \(reason)", now) }
            s.emit(.toWorker(id, .disconnect(reason: "\(code.rawValue): \(reason)")))
        }
    }

    /// Marks the worker alive; if unknown, tells it to register again. Returns whether it is known.
    mutating func touch(_ id: PeerID, _ now: Timestamp) -> Bool {
        guard let slot = workers.index(forKey: id) else {
            // One DISCONNECT per connection per heartbeat interval: a worker acts on the first and
            // sends READY again if no WELCOME comes, so more tell it nothing, and each would wait in
            // the send queue of a peer that may never read (up to the high-water mark, 10,000).
            if now.milliseconds(since: disconnectWindowStart) >= config.heartbeatMilliseconds {
                disconnectedRecently.removeAll(keepingCapacity: true)
                disconnectWindowStart = now
            }
            if disconnectedRecently.insert(id).inserted {
                emit(.toWorker(id, .disconnect(reason: "unknown worker: register again with READY")))
                emit(.event(.unknownWorker(worker: id)))
            }
            return false
        }
        workers.values[slot].lastSeen = now
        return true
    }

    /// CREDIT(n): the worker can take n more batches.
    public mutating func workerCredit(_ id: PeerID, _ n: UInt32, now: Timestamp) -> [Action] {
        collect { s in
            guard s.touch(id, now) else { return }
            s.workers[id]!.credit = min(s.workers[id]!.credit + Int(n), s.config.maxCredit)
            s.offer(id)
            s.dispatch(s.workers[id]!.pool, now)
        }
    }

    /// HEARTBEAT from a worker.
    public mutating func workerHeartbeat(_ id: PeerID, now: Timestamp) -> [Action] {
        collect { s in _ = s.touch(id, now) }
    }

    /// Whether `attempt` of `batchID` is the one currently running on `worker`.
    mutating func isCurrent(_ batchID: String, _ attempt: UInt32, on worker: PeerID) -> Bool {
        answerState(batchID, attempt, on: worker).current
    }

    /// What an answer of `worker` about `attempt` of `batchID` needs to know, read once and in place
    /// (a copy of the record would retain each of its fields): the batch's request count while it
    /// is held and unfinished (nil otherwise), and whether that attempt is the one running on `worker`.
    mutating func answerState(_ batchID: String, _ attempt: UInt32, on worker: PeerID) -> (slot: Int?, openRequests: UInt32?, current: Bool) {
        guard let slot = batches.index(forKey: batchID) else { return (nil, nil, false) }
        func read(_ b: inout BatchRecord<Payload>) -> (UInt32?, Bool) {
            (b.isFinished ? nil : b.meta.requestCount, b.isRunning(attempt: attempt, on: worker))
        }
        let (open, current) = read(&batches[slot: slot])
        return (slot, open, current)
    }

    /// A RESULT or FAILED for a dispatch the worker owes returns its credit, whatever becomes of
    /// the batch; one for a dispatch the same process owed under an earlier registration too (it
    /// reconnected: its READY counted the batch as held). Any other (a duplicate, an unknown
    /// batch, another worker's dispatch) returns none: a worker never holds more than it asked for.
    mutating func settle(_ id: PeerID, _ dispatch: Dispatch) {
        if withWorker(id, { $0.owed.remove(dispatch) != nil }) {
            returnCredit(id)
        } else if let owner = orphaned[dispatch], !owner.isEmpty, owner == withWorker(id, { $0.process }) {
            orphaned[dispatch] = nil
            returnCredit(id)
        }
    }

    /// One credit back to a worker, unless it grants its credit explicitly (it sends CREDIT for
    /// each slot it wants filled).
    mutating func returnCredit(_ id: PeerID) {
        let maxCredit = config.maxCredit
        withWorker(id) { w in
            if w.creditMode == .implicit { w.credit = min(w.credit + 1, maxCredit) }
            w.completed += 1
        }
        offer(id)
    }

    /// PROGRESS: forwarded to the producer when it is about the current attempt.
    public mutating func workerProgress(_ id: PeerID, batchID: String, attempt: UInt32, done: UInt32, total: UInt32, now: Timestamp) -> [Action] {
        collect { s in
            guard s.touch(id, now), s.isCurrent(batchID, attempt, on: id) else { return }
            s.workers[id]!.progress[batchID] = (done, total)
            if let route = s.sessions[s.batches[batchID]!.session]?.route {
                s.emit(.toProducer(route, .progress(batchID: batchID, done: done, total: total)))
            }
        }
    }

    /// RESULT: completes the batch if this is its current attempt; a stale one is dropped.
    ///
    /// - Parameter check: reads `payload` and says what it holds (nil: not checked); called only for
    ///   a result that would be accepted, so stale or forged ones cost no scan. A result that is not
    ///   a JSON array of the batch's request count, or whose stats are not JSON, fails the attempt
    ///   as a retryable `engine_error` instead of reaching the producer.
    public mutating func workerResult(_ id: PeerID, batchID: String, attempt: UInt32, stats: Payload, payload: Payload,
                                      check: (() -> ResultCheck)? = nil, now: Timestamp) -> [Action] {
        collect { s in
            // A result the producer cannot use is a failure of the attempt that produced it.
            let recovered = !s.recoveredAttempts.isEmpty && s.recoveredAttempts[batchID].map { attempt <= $0 } == true
            // The batch's state is read once here: nothing below changes it before `finish`.
            let (slot, openRequests, current) = s.answerState(batchID, attempt, on: id)
            if let check, let requests = openRequests, recovered || current,
               let problem = check().problem(expecting: requests) {
                let message = "the worker's RESULT was refused: \(problem)"
                if recovered {
                    // A late answer to the previous broker's dispatch: the batch is queued again already.
                    if s.workers[id] != nil { s.returnCredit(id); s.dispatch(s.workers[id]!.pool, now) } else { _ = s.touch(id, now) }
                    return
                }
                guard s.touch(id, now) else { return }
                s.settle(id, Dispatch(batchID: batchID, attempt: attempt))
                let pool = s.workers[id]!.pool
                if s.isCurrent(batchID, attempt, on: id) {
                    s.attemptFailed(batchID, code: AnyFailureCode(.engineError), message: message, retryable: true,
                                    partial: nil, chargeAttempt: true, now)
                } else {
                    s.pools[pool]!.counters.staleDropped += 1
                    s.emit(.event(.staleDropped(batchID: batchID, worker: id, attempt: attempt)))
                }
                s.finishDrainIfDone(id)
                s.dispatch(pool, now)
                return
            }
            // A result for an attempt the broker made before it restarted: accepted once, from
            // whichever worker (it may not have registered again yet).
            if !s.recoveredAttempts.isEmpty, let recovered = s.recoveredAttempts[batchID], attempt <= recovered, let b = s.batches[batchID], !b.isFinished {
                if case .running(let other, _, _) = b.state, other != id {
                    s.sendWorker(other, .cancel(batchID: batchID, attempt: b.attempt), now)
                }
                s.finish(batchID, .result(stats: stats, payload: payload), now)
                if s.workers[id] != nil { s.returnCredit(id); s.dispatch(s.workers[id]!.pool, now) } else { _ = s.touch(id, now) }
                return
            }
            guard s.touch(id, now) else { return }
            s.settle(id, Dispatch(batchID: batchID, attempt: attempt))
            let pool = s.withWorker(id) { $0.pool }
            if current, let slot {
                // `slot` holds: nothing since `answerState` removed a batch.
                s.finish(slot: slot, .result(stats: stats, payload: payload), now)
            } else {
                s.pools[pool]!.counters.staleDropped += 1
                s.emit(.event(.staleDropped(batchID: batchID, worker: id, attempt: attempt)))
            }
            s.finishDrainIfDone(id)
            s.dispatch(pool, now)
        }
    }

    /// FAILED from a worker: retried when retryable and attempts remain, else delivered as FAILED.
    public mutating func workerFailed(_ id: PeerID, batchID: String, attempt: UInt32, code: AnyFailureCode, retryable: Bool,
                                      message: String, partial: Payload?, now: Timestamp) -> [Action] {
        collect { s in
            guard s.touch(id, now) else { return }
            s.settle(id, Dispatch(batchID: batchID, attempt: attempt))
            let pool = s.workers[id]!.pool
            if s.isCurrent(batchID, attempt, on: id) {
                // A hand-back is free only from a worker that said BYE: it gets nothing new, so it
                // can hand back each batch once. From a worker that is not draining it is a failure
                // like any other, charged, or a worker that keeps handing back would have the
                // broker re-dispatch to it forever, beyond max_attempts.
                let handedBack = code.known == .handedBack
                let free = handedBack && s.workers[id]!.drainingSince != nil
                s.attemptFailed(batchID, code: code, message: handedBack && !free ? "\(message) (handed back by a worker that is not draining: charged as an attempt)" : message,
                                retryable: retryable || handedBack, partial: partial, chargeAttempt: !free, now)
            } else {
                s.pools[pool]!.counters.staleDropped += 1
                s.emit(.event(.staleDropped(batchID: batchID, worker: id, attempt: attempt)))
            }
            s.finishDrainIfDone(id)
            s.dispatch(pool, now)
        }
    }

    /// BYE: the worker takes nothing new; it is removed once it holds nothing.
    public mutating func workerBye(_ id: PeerID, reason: String, now: Timestamp) -> [Action] {
        collect { s in
            guard s.touch(id, now) else { return }
            if s.workers[id]!.drainingSince == nil { s.workers[id]!.drainingSince = now }
            s.finishDrainIfDone(id)
        }
    }

    mutating func finishDrainIfDone(_ id: PeerID) {
        // Read in place: a copy of the record would retain its sets on every answer.
        guard let pool = ifWorker(id, { w in w.drainingSince != nil && w.running.isEmpty ? w.pool : nil }) ?? nil else { return }
        removeWorker(id)
        emit(.event(.workerLeft(worker: id, pool: pool)))
    }

    /// The I/O layer could not route to the worker: it is gone.
    public mutating func workerUnreachable(_ id: PeerID, now: Timestamp) -> [Action] {
        collect { s in
            if s.workers[id] != nil { s.loseWorker(id, reason: "connection lost", now) }
        }
    }

    /// A connection on the backend dropped (the broker's socket monitor saw it; it cannot tell
    /// whose): a heartbeat to every worker finds the one that is gone now, since the send to it
    /// fails, instead of at its next heartbeat, up to `heartbeatMilliseconds` later.
    public mutating func probeWorkers(now: Timestamp) -> [Action] {
        collect { s in
            for id in s.workers.keys { s.sendWorker(id, .heartbeat, now) }
        }
    }

    mutating func removeWorker(_ id: PeerID) {
        guard let w = workers.removeValue(forKey: id) else { return }
        pools[w.pool]?.workers.remove(id)
        guard !w.process.isEmpty else { return }
        for dispatch in w.owed where orphaned.updateValue(w.process, forKey: dispatch) == nil { orphanedOrder.append(dispatch) }
        while orphanedOrder.count > config.maxOrphanedDispatches, let oldest = orphanedOrder.popFirst() { orphaned[oldest] = nil }
    }

    /// Declares a worker dead: every batch it held goes back to the front of its queue (or fails
    /// for good when out of attempts).
    mutating func loseWorker(_ id: PeerID, reason: String, _ now: Timestamp) {
        guard let w = workers[id] else { return }
        // Remove it first: requeueing dispatches at once, and nothing may go back to this worker.
        removeWorker(id)
        let held = runningIDs(w).sorted()
        for batchID in held {
            attemptFailed(batchID, code: AnyFailureCode(.workerLost), message: "worker \(id) lost: \(reason)",
                          retryable: true, partial: nil, chargeAttempt: true, now)
        }
        emit(.event(.workerLost(worker: id, pool: w.pool, reason: reason, requeued: held.count)))
        dispatch(w.pool, now)
    }
}
