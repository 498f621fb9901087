import CompassProtocol
import CompassSystem // UInt64.since

extension ClientStateMachine {
    // MARK: Messages from the broker

    /// A message from the broker: any message at all shows it is alive.
    mutating func received(_ reply: FromBroker, now: UInt64) -> [ClientAction] {
        collect { m in
            guard !m.closed else { return }
            m.lastHeard = now
            switch reply {
            case .welcome(let brokerID, let maxPayloadBytes):
                if let maxPayloadBytes { m.maxPayloadBytes = maxPayloadBytes }
                m.noteBroker(brokerID, now)
            case .accepted(let id):
                guard var o = m.outstanding[id] else { break }
                o.accepted = true
                o.poolWaitSince = nil // its pool has a worker: a later wait (after a restart, say) starts again
                if o.cancelAgain {
                    o.cancelAgain = false
                    m.send(.cancel(batchID: id), now)
                }
                m.outstanding[id] = o
                if !m.waitingPools.isEmpty { m.waitingPools.remove(o.submission.pool) }
            case .rejected(let id, let code, let message, let retryAfter):
                m.rejected(id, code: code, message: message, retryAfter: retryAfter, now)
            case .progress(let id, let done, let total):
                if m.outstanding[id] != nil { m.emit(.notify(.progress(batchID: id, done: done, total: total))) }
            case .outcome(let outcome):
                m.deliver(outcome, now)
            case .status(let json):
                if m.lateStatusReplies > 0 {
                    m.lateStatusReplies -= 1 // the reply to a query that timed out
                } else if !m.statusWaiters.isEmpty {
                    m.emit(.answerStatus(m.statusWaiters.removeFirst().caller, json))
                }
            case .heartbeat(let brokerID):
                m.noteBroker(brokerID, now)
            case .unreadable:
                break
            }
        }
    }

    /// REJECTED of an outstanding batch: retry it later, say HELLO first, or fail its caller.
    mutating func rejected(_ id: String, code: String, message: String, retryAfter: UInt32, _ now: UInt64) {
        guard var o = outstanding[id] else { return }
        if code == RejectCode.unknownBatch.rawValue {
            // Never the answer to a SUBMIT: to our CANCEL (or to an ACK of an earlier batch with this
            // id). The batch is still awaited and a (re-)SUBMIT of it will be ACCEPTED: a broker that
            // restarted lost it, and our re-SUBMIT re-creates it (or has, crossing this answer).
            // Failing the caller would leave that batch's outcome with nobody to ACK it; wait for it
            // instead, and cancel again once the broker holds the batch.
            if o.cancelling { outstanding[id]?.cancelAgain = true }
        } else if code == RejectCode.busy.rawValue && !options.retryBusy {
            removeOutstanding(id)
            emit(.fail(o.caller, .busy(message: message, retryAfterMilliseconds: retryAfter)))
        } else if code == RejectCode.busy.rawValue || code == RejectCode.shuttingDown.rawValue {
            // Back off: the broker's hint, doubled per refusal, with jitter, capped.
            o.busyCount += 1
            let base = UInt64(max(retryAfter, 20)) << UInt64(min(o.busyCount - 1, 6))
            let wait = min(base, options.maxBusyBackoffMilliseconds) + UInt64.random(in: 0...20, using: &random)
            o.retryAt = now + wait
            outstanding[id] = o
            emit(.notify(.busy(batchID: id, retryAfterMilliseconds: UInt32(clamping: wait))))
        } else if code == RejectCode.unknownPool.rawValue && retryAfter > 0 && options.unknownPoolWaitMilliseconds > 0
                    && now.since(o.poolWaitSince ?? now) < options.unknownPoolWaitMilliseconds {
            // A valid pool no worker has joined yet: wait for one, bounded.
            if o.poolWaitSince == nil { o.poolWaitSince = now }
            o.retryAt = now + min(UInt64(retryAfter), 1000) + UInt64.random(in: 0...50, using: &random)
            outstanding[id] = o
            if waitingPools.insert(o.submission.pool).inserted {
                emit(.notify(.waitingForPool(pool: o.submission.pool, message: message)))
            }
        } else if code == RejectCode.sessionRequired.rawValue && o.sessionRetries < Self.maxSessionRetries {
            // Our reconnected socket delivered this SUBMIT before a HELLO: say HELLO, then re-send.
            o.sessionRetries += 1
            o.retryAt = now
            helloBeforeRetry = true
            outstanding[id] = o
        } else {
            removeOutstanding(id)
            let waited = o.poolWaitSince.map { " (waited \(now.since($0) / 1000) s for a worker of pool '\(o.submission.pool)')" } ?? ""
            emit(.fail(o.caller, .rejected(code: code, message: message + waited)))
        }
    }

    /// Hands an outcome to whoever awaits it, once; keeps one nobody awaits yet (unacknowledged).
    mutating func deliver(_ outcome: BatchOutcome, _ now: UInt64) {
        let id = outcome.batchID
        guard let o = removeOutstanding(id) else {
            if delivered.contains(id) {
                send(.ack(batchID: id), now)
            } else if unclaimed[id] == nil {
                unclaimed[id] = outcome
                unclaimedOrder.append(id)
                if unclaimedOrder.count > Self.rememberedOutcomes { unclaimed[unclaimedOrder.removeFirst()] = nil }
            }
            return
        }
        if !options.manualAck { send(.ack(batchID: id), now) }
        rememberDelivered(id)
        emit(.complete(o.caller, outcome))
    }

    /// Takes an answered (or abandoned) batch out of `outstanding`; its pool leaves `waitingPools`
    /// when no other batch waits for it, so the next wait for the pool is announced again.
    @discardableResult
    mutating func removeOutstanding(_ id: String) -> Outstanding? {
        guard let o = outstanding.removeValue(forKey: id) else { return nil }
        let pool = o.submission.pool
        if waitingPools.contains(pool) && !outstanding.values.contains(where: { $0.submission.pool == pool && $0.poolWaitSince != nil }) {
            waitingPools.remove(pool)
        }
        return o
    }

    /// Remembers a batch delivered to its caller (once in the order list), forgetting the oldest past the bound.
    mutating func rememberDelivered(_ id: String) {
        guard delivered.insert(id).inserted else { return }
        deliveredOrder.append(id)
        if deliveredOrder.count > Self.rememberedOutcomes { delivered.remove(deliveredOrder.removeFirst()) }
    }

    /// A broker that is not the one we knew has answered: it restarted and may have lost what it
    /// had accepted (without a journal). Say HELLO and re-submit everything still awaited.
    mutating func noteBroker(_ id: String, _ now: UInt64) {
        defer { brokerID = id }
        guard let known = brokerID, known != id else { return }
        hello(now)
        resubmitOutstanding(now)
        // STATUS replies the old process owed are lost, and maybe the requests of queries waiting now.
        lateStatusReplies = 0
        for i in statusWaiters.indices { statusWaiters[i].requestMayBeLost = true }
    }

    /// Every outstanding batch again, but those waiting out a backoff (their timer sends them).
    /// A CANCEL sent before may have been lost: it goes again once the batch is ACCEPTED.
    /// In the order of the batch ids, so a run is the same from one process to the next (a
    /// dictionary's order is not): seeded tests replay exactly.
    mutating func resubmitOutstanding(_ now: UInt64) {
        for id in outstanding.keys.sorted() {
            guard let o = outstanding[id] else { continue }
            if o.cancelling { outstanding[id]?.cancelAgain = true }
            guard o.retryAt == nil else { continue }
            outstanding[id]?.accepted = false
            send(.submit(o.submission), now)
        }
    }

    // MARK: Connection

    /// The new socket `.reconnect` asked for is in place: HELLO, every outstanding batch again,
    /// and the STATUS queries whose requests went out on the old socket.
    mutating func reconnected(now: UInt64) -> [ClientAction] {
        collect { m in
            m.hello(now)
            m.resubmitOutstanding(now)
            // The old socket's replies never come; each query waiting asks again on this one.
            m.lateStatusReplies = 0
            for i in m.statusWaiters.indices {
                m.statusWaiters[i].requestMayBeLost = false
                m.send(.status, now)
            }
        }
    }

    /// No new socket could be made: keep the old one and try again after another liveness period.
    mutating func reconnectFailed(now: UInt64) -> [ClientAction] {
        collect { m in m.lastHeard = now }
    }

    /// A refused handshake would otherwise look like a broker that never answers: fail what waits,
    /// with the reason, and keep failing new submits until a handshake succeeds.
    mutating func handshake(_ event: HandshakeEvent, now: UInt64) -> [ClientAction] {
        collect { m in
            switch event {
            case .succeeded:
                m.refused = nil
                m.handshakeFailures = 0
            case .authenticationFailed(let status):
                let key = m.options.curve.map { " \($0.keys.publicKey)" } ?? ""
                m.refuse("the broker refused this producer's CURVE key\(key) (ZAP status \(status)): is that public key in a .pub file of "
                         + "the broker's producer allowlist? The broker logs the allowlist it read and the key it refused")
            case .failed(let code):
                // One failure can be a broker stopping or starting mid-handshake; a mechanism or
                // server key mismatch fails every time.
                m.handshakeFailures += 1
                guard m.handshakeFailures >= 3 else { return }
                m.refuse(m.options.curve == nil
                    ? "the handshake with the broker failed (errno \(code)): it probably requires CURVE; pass --curve-server-key and --curve-key"
                    : "the CURVE handshake with the broker failed (errno \(code)): is --curve-server-key the broker's public key?")
            }
        }
    }

    mutating func refuse(_ reason: String) {
        refused = reason
        failAll(.unauthorized(reason))
    }
}
