import CompassProtocol

/// What the broker must make durable, emitted (when `SchedulerConfig.journaling` is on) in the same
/// action list as the messages it justifies. The broker commits a turn's operations before it sends
/// that turn's messages: an ACCEPTED or RESULT never leaves before its record is on disk.
/// Only batches producers submitted are journaled; the halves of a split batch are not (after a
/// restart the batch runs whole again, with its kill count, and is split anew).
public enum JournalOperation<Payload> {
    case accepted(BatchSnapshot<Payload>)
    /// Dispatch and retry bookkeeping of an unfinished batch.
    case attempt(batchID: String, attempt: UInt32, charged: UInt32, kills: UInt32)
    case finished(batchID: String, outcome: JournalOutcome<Payload>)
    /// Acknowledged, expired or cancelled before acceptance: delete it.
    case removed(batchID: String)
    /// The batch now belongs to another session (its connection said HELLO after submitting).
    case rebound(batchID: String, session: SessionKey)
}

public enum JournalOutcome<Payload> {
    case result(stats: Payload, payload: Payload)
    case failed(code: AnyFailureCode, message: String, partial: Payload?)
}

/// A batch as the journal stores it, and as recovery gives it back.
public struct BatchSnapshot<Payload> {
    public var id: String
    public var session: SessionKey
    public var pool: String
    public var meta: BatchMeta
    public var maxAttempts: UInt16
    public var payload: Payload
    /// Milliseconds from acceptance until now, when restored (for deadlines).
    public var ageMilliseconds: UInt64
    public var attempt: UInt32
    public var charged: UInt32
    public var kills: UInt32
    public var outcome: JournalOutcome<Payload>?

    public init(id: String, session: SessionKey, pool: String, meta: BatchMeta, maxAttempts: UInt16, payload: Payload,
                ageMilliseconds: UInt64 = 0, attempt: UInt32 = 0, charged: UInt32 = 0, kills: UInt32 = 0, outcome: JournalOutcome<Payload>? = nil) {
        self.id = id
        self.session = session
        self.pool = pool
        self.meta = meta
        self.maxAttempts = maxAttempts
        self.payload = payload
        self.ageMilliseconds = ageMilliseconds
        self.attempt = attempt
        self.charged = charged
        self.kills = kills
        self.outcome = outcome
    }
}

extension Scheduler {
    /// Emits a record to journal, when journaling: without a journal the record is never built
    /// (SUBMIT's would copy the batch's id, session, pool and payload reference only to drop them).
    mutating func journal(_ operation: @autoclosure () -> JournalOperation<Payload>) {
        if config.journaling { emit(.journal(operation())) }
    }

    mutating func journalAttempt(_ id: String) {
        guard config.journaling, let b = batches[id], b.parent == nil else { return }
        emit(.journal(.attempt(batchID: id, attempt: b.attempt, charged: b.charged, kills: b.kills)))
    }

    /// Puts back what a journal held after a restart: unfinished batches queued again in their
    /// order (the next dispatch is their next attempt), finished ones waiting for their producer.
    /// A late RESULT for an attempt made before the restart is accepted once.
    public mutating func restore(_ snapshots: [BatchSnapshot<Payload>], now: Timestamp) {
        for s in snapshots {
            if pools.index(forKey: s.pool) == nil { pools.add(s.pool) }
            let acceptedAt = Timestamp(nanoseconds: now.nanoseconds.since(s.ageMilliseconds * 1_000_000))
            let deadline = s.meta.deadlineMilliseconds > 0 ? acceptedAt.adding(milliseconds: UInt64(s.meta.deadlineMilliseconds)) : nil
            var record = BatchRecord(id: s.id, pool: s.pool, session: s.session, meta: s.meta, maxAttempts: s.maxAttempts,
                                     payload: s.payload, acceptedAt: acceptedAt, deadline: deadline)
            record.attempt = s.attempt
            record.charged = s.charged
            record.kills = s.kills
            record.totalDispatches = s.charged  // attempts reported to the producer: hand-backs are not
            let slot = batches.insert(record)
            sessions[s.session, default: SessionRecord()].batches.insert(slot)
            pools[s.pool]!.heldBytes += s.payload.byteCount
            sessions[s.session]!.heldBytes += s.payload.byteCount
            if let outcome = s.outcome {
                batches[slot: slot].state = .finished(outcome.scheduled, at: now)
                pools[s.pool]!.heldBytes += batches[s.id]!.heldBytes - s.payload.byteCount
                sessions[s.session]!.heldBytes += batches[s.id]!.heldBytes - s.payload.byteCount
                finishedOrder.append((s.id, now))
            } else {
                enqueue(slot, pool: pools.index(forKey: s.pool)!, session: s.session, priority: s.meta.priority)
                pools[s.pool]!.queuedBatches += 1
                pools[s.pool]!.queuedRequests += Int(s.meta.requestCount)
                if let deadline { deadlines.insert(DeadlineEntry(at: deadline, batchID: s.id)) }
                if s.attempt > 0 { recoveredAttempts[s.id] = s.attempt }
            }
        }
    }
}

extension JournalOutcome where Payload: BatchPayload {
    var scheduled: Outcome<Payload> {
        switch self {
        case .result(let stats, let payload): .result(stats: stats, payload: payload)
        case .failed(let code, let message, let partial): .failed(code: code, message: message, partial: partial)
        }
    }
}

extension Outcome {
    var journaled: JournalOutcome<Payload> {
        switch self {
        case .result(let stats, let payload): .result(stats: stats, payload: payload)
        case .failed(let code, let message, let partial): .failed(code: code, message: message, partial: partial)
        }
    }
}

extension UInt64 {
    func since(_ earlier: UInt64) -> UInt64 { self > earlier ? self - earlier : 0 }
}
