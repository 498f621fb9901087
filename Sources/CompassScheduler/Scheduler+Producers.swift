import CompassProtocol

extension Scheduler {
    /// The session a connection speaks for: the one it said HELLO with, else an anonymous one of its own.
    mutating func session(of route: PeerID) -> SessionKey {
        if let s = routeSessions[route] { return s }
        let anonymous = SessionKey.anonymous(route)
        routeSessions[route] = anonymous
        sessions[anonymous, default: SessionRecord()].route = route
        return anonymous
    }

    /// HELLO(session): binds the connection to the session and re-sends every result it has not ACKed.
    /// Batches the connection submitted before its HELLO (libzmq delivers what was queued in a
    /// reconnecting socket first) move into the session.
    ///
    /// A HELLO naming a session in the broker's anonymous form (`anon:` and a routing id) is
    /// refused `bad_frame` and changes nothing: that text names another connection's session, and
    /// routing ids can be guessed. Anonymous sessions come only from connections (and the journal).
    ///
    /// - Parameter name: the HELLO's session, as sent (WELCOME echoes it).
    public mutating func hello(from route: PeerID, session name: String, now: Timestamp) -> [Action] {
        if let problem = WireProtocol.helloSessionProblem(name) {
            return collect { s in s.emit(.toProducer(route, .rejected(batchID: "", code: .badFrame, message: problem, retryAfterMilliseconds: 0))) }
        }
        let session = SessionKey(name)
        return collect { s in
            if let old = s.routeSessions[route] {
                if old != session {
                    if old.isAnonymous {
                        s.adopt(anonymous: old, into: session)
                    } else if let record = s.sessions[old], record.batches.isEmpty {
                        // A connection speaks for one session at a time: the one it leaves is
                        // forgotten at once when it holds nothing (a later HELLO starts it again),
                        // so HELLOs with ever new sessions hold one session, not one each.
                        s.sessions[old] = nil
                    } else {
                        s.sessions[old]?.route = nil
                    }
                }
            } else if s.sessions[.anonymous(route)] != nil {
                // This connection's batches from before the binding was lost (a broker restart that
                // restored them from its journal, or a send that failed while libzmq reconnected
                // the same socket): the same routing id is the same connection.
                s.adopt(anonymous: .anonymous(route), into: session)
            }
            if let previous = s.sessions[session]?.route, previous != route { s.routeSessions[previous] = nil }
            s.routeSessions[route] = session
            s.sessions[session, default: SessionRecord()].route = route
            s.sessions[session]!.lastSeen = now
            let finished = s.sessions[session]!.batches.filter { s.batches[slot: $0].isFinished }.map { s.batches[slot: $0].id }.sorted()
            s.emit(.toProducer(route, .welcome(session: name, pendingResults: finished.count)))
            for id in finished { s.deliver(id) }
        }
    }

    /// SUBMIT: queues a batch, or refuses it with a reason. Idempotent per batch id and session.
    ///
    /// - Parameter requestCount: the number of requests, as the broker counted them in the payload.
    public mutating func submit(from route: PeerID, batchID: String, pool: String, meta: BatchMeta,
                                payload: Payload, now: Timestamp) -> [Action] {
        collect { s in
            let session = s.session(of: route)
            func reject(_ code: RejectCode, _ message: String, retryAfter: UInt32 = 0) {
                s.emit(.toProducer(route, .rejected(batchID: batchID, code: code, message: message, retryAfterMilliseconds: retryAfter)))
                s.emit(.event(.rejected(code: code, message: "\(batchID): \(message)")))
            }
            if let problem = WireProtocol.submitBatchIDProblem(batchID) { return reject(.badFrame, problem) }
            if let existing = s.batches[batchID] {
                if existing.session != session {
                    // No connection acts for another session's batch: it cannot collect, ACK or
                    // cancel it. Only the session that holds a batch re-SUBMITs it.
                    let anonymous = session.isAnonymous, ownerAnonymous = existing.session.isAnonymous
                    if anonymous && !ownerAnonymous {
                        // A connection without a HELLO: a thief guessing ids, or an honest producer
                        // whose reconnected socket flushed its queued SUBMITs before its HELLO. Neither
                        // is bound to the session; the honest one says HELLO and re-submits.
                        return reject(.sessionRequired, "batch id \(batchID) belongs to a session and this connection has not said HELLO: "
                                      + "say HELLO with your session, then re-SUBMIT")
                    }
                    guard ownerAnonymous && !anonymous && existing.parent == nil && existing.pool == pool && existing.payload.hasSameBytes(as: payload) else {
                        return reject(.duplicate, "batch id \(batchID) belongs to another session; batch ids must be unique")
                    }
                    // A batch submitted by a connection that had not said HELLO (or whose session the
                    // broker forgot while it was silent and held nothing), re-submitted by a session
                    // with the same pool and payload: the producer reconnected with a new socket.
                    // The identical payload is the proof: a thief who guesses an id does not know it.
                    s.rebind(batchID, to: session)
                } else if existing.pool != pool || !existing.payload.hasSameBytes(as: payload) {
                    // The same id for other work: answering with the old batch's outcome would hand
                    // the producer results of requests it did not send this time.
                    let what = existing.pool != pool ? "pool '\(existing.pool)'" : "another payload (\(existing.payload.byteCount) bytes)"
                    return reject(.payloadMismatch, "batch id \(batchID) is already in use with \(what); "
                                  + "a batch id names one batch: re-SUBMIT it unchanged, or choose a new id for new work")
                }
                // A re-SUBMIT after a reconnect: confirm, and re-send the outcome if there is one.
                s.emit(.toProducer(route, .accepted(batchID: batchID)))
                s.deliver(batchID)
                return
            }
            if let acked = s.recentAckSet[batchID] {
                if acked.pool == pool && acked.payloadBytes == payload.byteCount && acked.payloadHash == payload.contentHash {
                    return reject(.duplicate, "batch \(batchID) was already completed and acknowledged")
                }
                return reject(.payloadMismatch, "batch id \(batchID) was completed and acknowledged with another "
                              + (acked.pool == pool ? "payload" : "pool ('\(acked.pool)')") + "; choose a new id for new work")
            }
            guard s.accepting else { return reject(.shuttingDown, "the broker is shutting down", retryAfter: 1000) }
            guard WireProtocol.isValidPoolName(pool) else {
                return reject(.unknownPool, "pool name '\(pool)' is invalid (1-64 characters of A-Z a-z 0-9 . _ -)")
            }
            // Read the fields, not a copy of the pool: a copy alive while the queue is pushed below
            // would share the queue's storage and make every push copy it whole.
            guard let slot = s.pools.index(forKey: pool) else {
                // Not final: a worker of this pool may still be starting, or the broker restarted
                // before its workers registered again. The hint says a re-SUBMIT may succeed.
                let known = s.pools.keys.sorted()
                let list = known.isEmpty ? "none" : known.prefix(10).joined(separator: ", ") + (known.count > 10 ? ", …" : "")
                return reject(.unknownPool, "no worker has joined pool '\(pool)' and the broker does not declare it (known pools: \(list)); "
                              + "a worker may still be starting: re-SUBMIT after the hint, or declare the pool on the broker (--pool)",
                              retryAfter: s.unknownPoolRetryMilliseconds)
            }
            func counts(_ p: inout PoolState) -> (held: Int, queued: Int) { (p.heldBytes, p.queuedBatches) }
            let (held, queued) = counts(&s.pools.values[slot])
            let bytes = payload.byteCount
            if bytes > s.config.maxPoolBytes {
                return reject(.tooLarge, "payload of \(bytes) bytes exceeds the pool limit of \(s.config.maxPoolBytes) bytes")
            }
            let retry = UInt32(clamping: max(50, s.config.heartbeatMilliseconds / 4))
            // The session's share first: a producer that never ACKs (or floods) fills its own share
            // and gets `busy`, while the pool keeps room for every other session. A session that
            // holds nothing may always submit one batch the pool can take.
            // The session's place, found once: nothing below adds or removes a session.
            let place = s.sessions.index(forKey: session)
            func sessionBytes(_ r: inout SessionRecord) -> Int { r.heldBytes }
            let sessionHeld = place.map { sessionBytes(&s.sessions.values[$0]) } ?? 0, share = s.config.sessionByteLimit
            if sessionHeld > 0 && sessionHeld + bytes > share {
                s.pools[pool]!.counters.rejectedBusy += 1
                return reject(.busy, "this session holds \(sessionHeld) bytes of its share of \(share) (payloads and results of its batches "
                              + "not yet acknowledged): ACK the results you have, or retry later", retryAfter: retry)
            }
            if held + bytes > s.config.maxPoolBytes || queued >= s.config.maxQueuedBatches {
                s.pools[pool]!.counters.rejectedBusy += 1
                return reject(.busy, "pool '\(pool)' is full (\(queued) batches queued, \(held) bytes held); retry later", retryAfter: retry)
            }
            let maxAttempts = meta.maxAttempts > 0 ? meta.maxAttempts
                : s.config.poolMaxAttempts.isEmpty ? s.config.defaultMaxAttempts : (s.config.poolMaxAttempts[pool] ?? s.config.defaultMaxAttempts)
            let deadline = meta.deadlineMilliseconds > 0 ? now.adding(milliseconds: UInt64(meta.deadlineMilliseconds)) : nil
            let record = BatchRecord(id: batchID, pool: pool, session: session, meta: meta, maxAttempts: maxAttempts,
                                     payload: payload, acceptedAt: now, deadline: deadline)
            let batch = s.batches.insert(record)
            if let place {
                func add(_ r: inout SessionRecord) {
                    r.batches.insert(batch)
                    r.heldBytes += bytes
                }
                add(&s.sessions.values[place])
            }
            if let deadline { s.deadlines.insert(DeadlineEntry(at: deadline, batchID: batchID)) }
            s.enqueue(batch, pool: slot, session: session, priority: meta.priority)
            s.withPool(pool) { p in
                p.queuedBatches += 1
                p.queuedRequests += Int(meta.requestCount)
                p.heldBytes += bytes
                p.counters.submitted += 1
            }
            s.journal(.accepted(BatchSnapshot(id: batchID, session: session, pool: pool, meta: meta, maxAttempts: maxAttempts, payload: payload)))
            s.emit(.toProducer(route, .accepted(batchID: batchID)))
            s.dispatch(pool, now)
        }
    }

    /// Moves one batch into another session.
    mutating func rebind(_ id: String, to session: SessionKey) {
        guard let slot = batches.index(forKey: id) else { return }
        let old = batches[slot: slot].session
        guard old != session else { return }
        batches[slot: slot].session = session
        let bytes = batches[slot: slot].heldBytes
        sessions[old]?.batches.remove(slot)
        sessions[old]?.heldBytes -= bytes
        if let record = sessions[old], record.batches.isEmpty, record.route == nil || old.isAnonymous {
            // An anonymous session left empty is forgotten with its binding; the connection, if
            // it is still there, gets a fresh one with its next message.
            sessions[old] = nil
            if let route = record.route, routeSessions[route] == old { routeSessions[route] = nil }
        }
        sessions[session, default: SessionRecord()].batches.insert(slot)
        sessions[session]!.heldBytes += bytes
        journal(.rebound(batchID: id, session: session))
    }

    /// Moves every batch of an anonymous session into a named one.
    mutating func adopt(anonymous old: SessionKey, into session: SessionKey) {
        guard let record = sessions.removeValue(forKey: old) else { return }
        sessions[session, default: SessionRecord()].heldBytes += record.heldBytes
        for slot in record.batches {
            batches[slot: slot].session = session
            sessions[session, default: SessionRecord()].batches.insert(slot)
            let id = batches[slot: slot].id
            journal(.rebound(batchID: id, session: session))
        }
    }

    /// CANCEL: a queued batch fails as `cancelled` at once; a running one too, and its worker is told.
    /// Every CANCEL is answered: with that FAILED; for a batch that had already finished (not yet
    /// ACKed), with its outcome again (too late to cancel); for an id the session does not hold,
    /// with REJECTED `unknown_batch`.
    public mutating func cancel(from route: PeerID, batchID: String, now: Timestamp) -> [Action] {
        collect { s in
            let session = s.session(of: route)
            guard let b = s.batches[batchID], b.session == session else {
                s.emit(.toProducer(route, .rejected(batchID: batchID, code: .unknownBatch,
                                                    message: "no batch \(batchID) in this session", retryAfterMilliseconds: 0)))
                return
            }
            if b.isFinished { return s.deliver(b) }
            if case .running(let worker, _, _) = b.state {
                s.sendWorker(worker, .cancel(batchID: batchID, attempt: b.attempt), now)
            }
            s.finish(batchID, .failed(code: AnyFailureCode(.cancelled), message: "cancelled by the producer", partial: nil), now)
        }
    }

    /// ACK: the producer has the outcome; forget the batch. An ACK of an id the session does not
    /// hold finished (unknown, another session's, already ACKed, or not finished yet) changes
    /// nothing and is answered REJECTED `unknown_batch`, so a producer's bug shows.
    public mutating func ack(from route: PeerID, batchID: String, now: Timestamp) -> [Action] {
        collect { s in
            let session = s.session(of: route)
            s.ifSession(session) { $0.lastSeen = now }
            // The fields it needs, read in place (a copy of the record would retain each of its fields).
            let slot = s.batches.index(forKey: batchID)
            let acked: AckedBatch?? = slot.map { slot in
                func read(_ b: inout BatchRecord<Payload>) -> AckedBatch? {
                    guard b.session == session, b.isFinished else { return nil }
                    return AckedBatch(pool: b.pool, payloadHash: b.payload.contentHash, payloadBytes: b.payload.byteCount)
                }
                return read(&s.batches[slot: slot])
            }
            guard let slot, let acked = acked ?? nil else {
                let why = s.batches[batchID].map { $0.session == session && !$0.isFinished } == true
                    ? "batch \(batchID) has not finished: there is no outcome to acknowledge yet"
                    : "no finished batch \(batchID) in this session (unknown, another session's, or already acknowledged)"
                s.emit(.toProducer(route, .rejected(batchID: batchID, code: .unknownBatch, message: why, retryAfterMilliseconds: 0)))
                return
            }
            // Remember the id with its pool and a hash of its payload (not the payload): a late
            // re-SUBMIT is refused `duplicate`, or `payload_mismatch` if it is other work.
            s.recentAckSet[batchID] = acked
            s.recentAcks.append(batchID)
            s.forget(slot: slot)
            while s.recentAcks.count > max(0, s.config.rememberedAcks), let old = s.recentAcks.popFirst() {
                s.recentAckSet[old] = nil
            }
        }
    }

    /// A producer HEARTBEAT: answered at once.
    public mutating func producerHeartbeat(from route: PeerID, now: Timestamp) -> [Action] {
        collect { s in
            if let session = s.routeSessions[route] { s.sessions[session]?.lastSeen = now }
            s.emit(.toProducer(route, .heartbeat))
        }
    }

    /// Forgets sessions that hold no batches and have been silent past `idleSessionMilliseconds`.
    mutating func forgetIdleSessions(_ now: Timestamp) {
        let idle = config.idleSessionMilliseconds
        for (name, record) in sessions where record.batches.isEmpty && now.milliseconds(since: record.lastSeen) > idle {
            sessions[name] = nil
            if let route = record.route, routeSessions[route] == name { routeSessions[route] = nil }
        }
    }

    /// The I/O layer could not route to this connection (it is gone): results wait for a HELLO.
    public mutating func producerUnreachable(_ route: PeerID) {
        guard let session = routeSessions.removeValue(forKey: route) else { return }
        if sessions[session]?.route == route { sessions[session]?.route = nil }
        if let s = sessions[session], s.batches.isEmpty { sessions[session] = nil }
    }

    /// The retry hint of `unknown_pool` for a valid pool name: a worker registers within about a
    /// heartbeat of starting, so re-asking faster than that gains nothing.
    var unknownPoolRetryMilliseconds: UInt32 { UInt32(clamping: max(250, config.heartbeatMilliseconds)) }

    /// Refuse new batches from now on (shutdown); batches already accepted continue.
    public mutating func stopAccepting() { accepting = false }
}
