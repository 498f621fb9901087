import CompassProtocol

extension Scheduler {
    /// Runs the timers: expires silent workers, sends heartbeats, takes back expired leases and
    /// drains, fails batches past their deadline, and drops results nobody collected in time.
    /// Call it every few tens of milliseconds; it does nothing when nothing is due.
    public mutating func tick(now: Timestamp) -> [Action] {
        collect { s in
            let expiry = s.config.expiryMilliseconds
            for (id, w) in s.workers {
                if now.milliseconds(since: w.lastSeen) > expiry {
                    s.loseWorker(id, reason: "silent for \(now.milliseconds(since: w.lastSeen)) ms (liveness \(expiry) ms)", now)
                    continue
                }
                if let since = w.drainingSince, now.milliseconds(since: since) > s.config.drainMilliseconds {
                    s.loseWorker(id, reason: "did not finish draining within \(s.config.drainMilliseconds) ms", now)
                    continue
                }
                // The worker's list now (`w` is the record as the loop began: what an earlier
                // worker's loss did since is not in it), as ids: the loop body can free slots.
                for batchID in s.workers[id].map({ s.runningIDs($0) }) ?? [] {
                    guard let b = s.batches[batchID], case .running(_, _, let lease?) = b.state, now >= lease else { continue }
                    s.sendWorker(id, .cancel(batchID: batchID, attempt: b.attempt), now)
                    s.attemptFailed(batchID, code: AnyFailureCode(.timeout),
                                    message: "lease of \(s.config.leaseMilliseconds) ms expired on worker \(id)",
                                    retryable: true, partial: nil, chargeAttempt: true, now)
                }
                if let current = s.workers[id], now.milliseconds(since: current.lastSent) >= s.config.heartbeatMilliseconds {
                    s.sendWorker(id, .heartbeat, now)
                }
            }
            while let next = s.deadlines.min, now >= next.at {
                s.deadlines.removeMin()
                guard let b = s.batches[next.batchID], !b.isFinished else { continue }
                if case .running(let worker, _, _) = b.state {
                    s.sendWorker(worker, .cancel(batchID: next.batchID, attempt: b.attempt), now)
                }
                s.finish(next.batchID, .failed(code: AnyFailureCode(.timeout),
                                               message: "deadline of \(b.meta.deadlineMilliseconds) ms passed", partial: nil), now)
            }
            if now.milliseconds(since: s.lastSessionSweep) >= 1_000 {
                s.lastSessionSweep = now
                s.forgetIdleSessions(now)
            }
            while let first = s.finishedOrder.first, now.milliseconds(since: first.at) > s.config.resultRetentionMilliseconds {
                s.finishedOrder.removeFirst()
                guard let b = s.batches[first.id], b.isFinished else { continue }
                s.emit(.event(.resultExpired(batchID: first.id, session: b.session.description)))
                s.forget(first.id)
            }
        }
    }
}
